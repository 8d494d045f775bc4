"""The model at the paper's scale against Hugging Face PEFT and eager, on one device.

    python benchmarks/gpu_paper_scale.py --data-dir DIR --tokenizer tokenizer.json [--device cuda]

A backbone with the configuration of FacebookAI/xlm-roberta-large (24 layers, d = 1024, 16
heads, FFN 4096, vocabulary 250,002) and random weights (built here: no download; speed does
not depend on the weights), bf16 autocast, N = 20 virtual tokens, h = 256:
- one training step (forward, backward, AdamW) on a real SIB-200 batch of 32 Joshi5 training
  sentences (up to 164 tokens, padded to the batch's longest): xpe_fast's XPE model against
  PEFT's P-tuning (PromptEncoderConfig, MLP, hidden 256) and against eager (the same model on
  its reference route: plain transformers with inputs_embeds);
- evaluation throughput over test sentences of the data folder's languages, batches of 64.
Each comparison runs its variants interleaved and reports medians, ratios and the fraction
of the bf16 matmul peak measured in the same run (torch.mm, 8192^3). Prints one JSON line.
`--size tiny` runs the same code on a 2-layer model (a smoke test on any device).
"""

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

JOSHI5 = ["arb_Arab", "deu_Latn", "eng_Latn", "fra_Latn", "jpn_Jpan", "spa_Latn", "zho_Hans"]
SIZES = {
    "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                  intermediate_size=4096),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=128),
}  # fmt: skip


def xlmr_large_config(size: str, num_labels: int = 7):
    """FacebookAI/xlm-roberta-large's config.json, written out (no hub access)."""
    import transformers as T

    return T.XLMRobertaConfig(
        vocab_size=250002,
        max_position_embeddings=514,
        type_vocab_size=1,
        layer_norm_eps=1e-5,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        hidden_act="gelu",
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        num_labels=num_labels,
        **SIZES[size],
    )


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def interleaved(fns: dict, device, rounds: int, warmup: int = 2) -> dict:
    for _ in range(warmup):
        for f in fns.values():
            f()
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            sync(device)
            t0 = time.perf_counter()
            f()
            sync(device)
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def matmul_peak(device, n: int) -> float:
    """bf16 torch.mm GFLOP/s, the best of a few runs."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    best = float("inf")
    for _ in range(6):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(4):
            a @ b
        sync(device)
        best = min(best, (time.perf_counter() - t0) / 4)
    return 2 * n**3 / best / 1e9


def models(size: str, device):
    """xpe_fast's XPE model, the same on its reference route, and PEFT's P-tuning, each on its
    own copy of one random backbone (the package swaps classes in place)."""
    import peft
    import transformers as T

    from xpe_fast import PromptedEncoderForSequenceClassification

    cfg = xlmr_large_config(size)
    torch.manual_seed(0)
    with torch.device(device):
        base = T.XLMRobertaForSequenceClassification(cfg)
        state = base.state_dict()
        other = T.XLMRobertaForSequenceClassification(cfg)
        other.load_state_dict(state)
        eager_base = T.XLMRobertaModel(cfg, add_pooling_layer=False)
    eager_base.load_state_dict({k[8:]: v for k, v in state.items() if k.startswith("roberta.")})
    pm = peft.get_peft_model(
        base,
        peft.PromptEncoderConfig(
            task_type="SEQ_CLS",
            num_virtual_tokens=20,
            encoder_hidden_size=256,
            encoder_reparameterization_type="MLP",
        ),
    )
    kw = dict(num_virtual_tokens=20, encoder_ratio=1.0, encoder_hidden_size=256)
    ours = PromptedEncoderForSequenceClassification(other.roberta, 7, accelerate=True, **kw)
    ours = ours.to(device)
    eager = PromptedEncoderForSequenceClassification(eager_base, 7, **kw).to(device)
    eager.set_backend("reference")
    return {"xpe_fast": ours, "eager": eager, "peft": pm}


def batches(data_dir, tokenizer, device):
    from tokenizers import Tokenizer

    from xpe_fast.data import SIB200, collate

    tok = Tokenizer.from_file(str(tokenizer))
    data = SIB200(data_dir)
    rng = random.Random(0)
    pool = [e for lang in JOSHI5 for e in data.split(lang, "train")]
    ex = rng.sample(pool, 32)
    enc = tok.encode_batch([e.text for e in ex])
    train = collate([e.ids[:164] for e in enc], [e.label for e in ex], 1)
    langs = [lang for lang in data.languages() if lang not in JOSHI5]
    test = [e for lang in langs for e in data.split(lang, "test")[:64]][:768]
    test_ids = sorted((e.ids[:164] for e in tok.encode_batch([e.text for e in test])), key=len)
    evals = [
        collate(test_ids[i : i + 64], [0] * len(test_ids[i : i + 64]), 1)
        for i in range(0, len(test_ids), 64)
    ]
    move = lambda b: tuple(t.to(device) for t in b)  # noqa: E731
    return move(train), [move(b) for b in evals]


def step_flops(cfg, B: int, S: int) -> float:
    """Forward (2 * tokens * encoder weights + attention) and its activation gradients (the
    same again): a frozen encoder computes no weight gradients."""
    d, L, f = cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size
    w = L * (4 * d * d + 2 * d * f)
    fwd = 2 * B * S * w + L * 4 * B * S * S * d
    return 2 * fwd


def eval_flops(cfg, evals) -> float:
    d, L, f = cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size
    w = L * (4 * d * d + 2 * d * f)
    total = 0.0
    for ids, _, _ in evals:
        B, S = ids.shape[0], ids.shape[1] + 20
        total += 2 * B * S * w + L * 4 * B * S * S * d
    return total


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--size", choices=sorted(SIZES), default="large")
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"skipped": "no CUDA device"}))
        return 0
    from xpe_fast.device import autocast

    ms = models(args.size, device)
    (ids, mask, labels), evals = batches(args.data_dir, args.tokenizer, device)
    opts = {
        k: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)
        for k, m in ms.items()
    }

    def step(name):
        m, opt = ms[name], opts[name]

        def run():
            m.train()
            with autocast("bf16", device):
                if name == "peft":
                    loss = m(input_ids=ids, attention_mask=mask, labels=labels).loss
                else:
                    loss, _ = m(ids, mask, labels=labels)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return run

    def evaluate(name):
        m = ms[name]

        def run():
            m.eval()
            with torch.inference_mode(), autocast("bf16", device):
                for b_ids, b_mask, _ in evals:
                    if name == "peft":
                        m(input_ids=b_ids, attention_mask=b_mask).logits.argmax(-1)
                    else:
                        m(b_ids, b_mask).argmax(-1)

        return run

    peak = matmul_peak(device, 8192 if args.size == "large" else 1024)
    cfg = xlmr_large_config(args.size)
    train_s = interleaved({k: step(k) for k in ms}, device, args.rounds)
    eval_s = interleaved({k: evaluate(k) for k in ms}, device, max(3, args.rounds // 3), 1)
    sf = step_flops(cfg, ids.shape[0], ids.shape[1] + 20)
    ef = eval_flops(cfg, evals)
    n_eval = sum(b[0].shape[0] for b in evals)
    out = {
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "size": args.size,
        "precision": "bf16",
        "bf16_matmul_peak_gflops": peak,
        "train_batch": list(ids.shape),
        "train_step_s": train_s,
        "train_speedup_vs_peft": train_s["peft"] / train_s["xpe_fast"],
        "train_speedup_vs_eager": train_s["eager"] / train_s["xpe_fast"],
        "train_step_gflop": sf / 1e9,
        "train_fraction_of_peak": sf / train_s["xpe_fast"] / 1e9 / peak,
        "eval_sentences": n_eval,
        "eval_sentences_per_s": {k: n_eval / v for k, v in eval_s.items()},
        "eval_speedup_vs_peft": eval_s["peft"] / eval_s["xpe_fast"],
        "eval_speedup_vs_eager": eval_s["eager"] / eval_s["xpe_fast"],
        "eval_fraction_of_peak": ef / eval_s["xpe_fast"] / 1e9 / peak,
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
