"""The training configuration: command-line flags, config files, presets, and their validation.

`resolve_config(args)` merges defaults, a preset, a --config file (.json or .toml, the same
keys with "_" or "-") and the command line, in that order, and checks every value before any
work starts: each mistake is a `UserError` naming the flag (one line, exit code 2).
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import fields
from datetime import datetime
from pathlib import Path

from . import data as D
from .errors import UserError
from .settings import (  # noqa: F401 (the settings, re-exported beside their parser)
    METHOD_RATIOS,
    PAPER_PRESET,
    VOLATILE,
    TrainConfig,
    method_tag,
    parse_method,
)

DEVICES_HELP = "auto (CUDA where available), cpu, cuda or cuda:N"

KEYS = {f.name for f in fields(TrainConfig)}
_INT = {
    "num_virtual_tokens",
    "encoder_hidden_size",
    "encoder_input_size",
    "steps",
    "target_steps",
    "batch_size",
    "eval_batch_size",
    "patience",
    "max_length",
    "threads",
}
_FLOAT = {
    "encoder_ratio",
    "prompt_dropout",
    "lr_prompt",
    "lr",
    "weight_decay",
    "warmup",
    "target_warmup",
    "grad_clip",
}
_BOOL = {"resume", "progress"}
_CHOICES = {
    "method": ("spt", "xpe", "dual"),
    "regime": ("zero-shot", "supervised"),
    "schedule": ("cosine", "cosine-restarts", "linear", "constant"),
    "optimizer": ("adamw", "adafactor"),
    "precision": ("auto", "fp32", "bf16"),
    "placement": ("data-parallel", "process"),
    "backend": (None, "reference", "cpu", "triton", "cuda"),
    "preset": (None, "paper"),
    "prompt_dropout_scope": ("batch", "sample"),
}


def flag(key: str) -> str:
    return "--" + key.replace("_", "-")


# ---- the command line ----------------------------------------------------------------


def build_parser(doc: str = "") -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m xpe_fast.train",
        description=doc.split("\n\n")[0] or None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    S = argparse.SUPPRESS
    g = ap.add_argument_group("method")
    g.add_argument(
        "--method",
        choices=["spt", "xpe", "dual"],
        default=S,
        help="spt (r=0), xpe (r=1) or dual (0<r<1) [xpe]",
    )
    g.add_argument(
        "--encoder-ratio",
        type=float,
        default=S,
        help="share of XPE tokens; default 0 / 1 / 0.7 for spt / xpe / dual",
    )
    g.add_argument(
        "--methods",
        default=S,
        help="a grid: comma-separated methods, e.g. spt,xpe,dual-0.3,dual-0.7, each "
        "run for every seed into one output folder",
    )
    g.add_argument(
        "--placement",
        choices=list(_CHOICES["placement"]),
        default=S,
        help="under torchrun: each run data-parallel over all processes, or whole "
        "runs (method, seed) on separate processes [data-parallel]",
    )
    g.add_argument("--num-virtual-tokens", type=int, default=S, help="N [20]")
    g.add_argument("--encoder-hidden-size", type=int, default=S, help="MLP width h [256]")
    g.add_argument(
        "--encoder-input-size",
        type=int,
        default=S,
        help="width d_in of the XPE input table [the backbone's hidden size]",
    )
    g.add_argument("--prompt-dropout", type=float, default=S, help="MLP dropout on sources [0.1]")
    g.add_argument(
        "--prompt-dropout-scope",
        choices=list(_CHOICES["prompt_dropout_scope"]),
        default=S,
        help="batch: one set of MLP dropout masks per step (the prompt computed once); "
        "sample: each sample its own masks, as the paper's code (--preset paper) [batch]",
    )
    g = ap.add_argument_group("data")
    g.add_argument(
        "--source",
        default=S,
        help="source group or codes: joshi5, enarzho, seen-92, or a comma-separated list [joshi5]",
    )
    g.add_argument("--targets", default=S, help="target languages or groups [all-wo-joshi5]")
    g.add_argument(
        "--regime",
        choices=["zero-shot", "supervised"],
        default=S,
        help="supervised also trains on each target's own train split [zero-shot]",
    )
    g.add_argument(
        "--data-dir",
        default=S,
        help="SIB-200 folder, or the hub id "
        f"{D.HUB_DATASET} [$XPE_FAST_DATA_DIR, ./shared/sib200, ../shared/sib200]",
    )
    g.add_argument(
        "--data",
        default=S,
        metavar="DIR_OR_HUB_ID",
        help="your own data instead of SIB-200: a folder <language>/<split>."
        "{csv,tsv,jsonl} (train, dev, test) or a Hugging Face dataset id with one "
        "configuration per language",
    )
    g.add_argument("--text-column", default=S, help="text field of --data [text]")
    g.add_argument(
        "--label-column",
        default=S,
        help="label field of --data; the label set is read from the sources' train splits [label]",
    )
    g.add_argument(
        "--groups",
        default=S,
        metavar="CSV",
        help="language groups for --source/--targets and the reports: a CSV with "
        "columns code,group",
    )
    g.add_argument("--max-length", type=int, default=S, help="tokens per input [164]")
    g = ap.add_argument_group("optimization")
    g.add_argument("--steps", type=int, default=S, help="training steps on the sources [150]")
    g.add_argument(
        "--target-steps",
        type=int,
        default=S,
        help="steps per target language in the supervised regime [100]",
    )
    g.add_argument(
        "--batch-size",
        type=int,
        default=S,
        help="global batch (split over processes under torchrun) [32]",
    )
    g.add_argument("--eval-batch-size", type=int, default=S, help="[64]")
    g.add_argument("--lr-prompt", type=float, default=S, help="lr of the prompt tables [5e-3]")
    g.add_argument("--lr", type=float, default=S, help="lr of the MLP and head [1e-2]")
    g.add_argument(
        "--weight-decay",
        type=float,
        default=S,
        help="weight decay of the MLP and head (prompt tables: 0) [0.01]",
    )
    g.add_argument("--warmup", type=float, default=S, help="warm-up share of the steps [0.1]")
    g.add_argument("--target-warmup", type=float, default=S, help="[0.05]")
    g.add_argument("--schedule", choices=list(_CHOICES["schedule"]), default=S, help="[cosine]")
    g.add_argument("--optimizer", choices=list(_CHOICES["optimizer"]), default=S, help="[adamw]")
    g.add_argument("--grad-clip", type=float, default=S, help="0 turns clipping off [1.0]")
    g.add_argument(
        "--eval-every",
        default=S,
        help="evaluate on the source dev sets every K steps, or 'epoch' [50]",
    )
    g.add_argument(
        "--patience",
        type=int,
        default=S,
        help="early stopping: evaluations without a lower dev loss, counted "
        "after half the steps [20]",
    )
    g.add_argument(
        "--precision",
        choices=list(_CHOICES["precision"]),
        default=S,
        help="auto = bf16 autocast where the CPU has AMX / AVX-512 bf16 (or on CUDA "
        "with bf16), else fp32",
    )
    g.add_argument("--seeds", default=S, help="comma-separated seeds, one run each [0]")
    g = ap.add_argument_group("run")
    g.add_argument(
        "--preset",
        choices=["paper"],
        default=S,
        help="paper: the paper's recipe (24,000 steps, Adafactor, 10 seeds)",
    )
    g.add_argument(
        "--backbone",
        default=S,
        help="e5-small (embedded), a hub id or a local model folder [e5-small]",
    )
    g.add_argument("--tokenizer", default=S, help="a tokenizer.json to use instead")
    g.add_argument(
        "--init-adapter",
        default=S,
        metavar="DIR",
        help="start from this adapter (xpe_fast's, a PEFT prompt adapter, or the "
        "paper's layout with its MLP) instead of random tables",
    )
    g.add_argument("--output-dir", default=S, help="[runs/<method>-<source>-<time>]")
    g.add_argument("--device", default=S, help=f"{DEVICES_HELP} [auto]")
    g.add_argument(
        "--backend",
        choices=[c for c in _CHOICES["backend"] if c],
        default=S,
        help="backend of the fused ops [the device's best]",
    )
    g.add_argument("--threads", type=int, default=S, help="torch threads [torch's default]")
    g.add_argument(
        "--resume", action="store_true", default=S, help="continue the run in --output-dir"
    )
    g.add_argument("--no-progress", dest="progress", action="store_false", default=S)
    g.add_argument("--config", default=None, help="a .json or .toml file with these keys")
    return ap


def load_config_file(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--config: file {path} does not exist")
    from .textfile import read_text

    text = read_text(p, lambda m: UserError(f"--config: {m}"))
    try:
        if p.suffix == ".toml":
            import tomllib

            raw = tomllib.loads(text)
        else:
            raw = json.loads(text)
    except ValueError as e:  # JSONDecodeError and TOMLDecodeError
        raise UserError(f"--config: {path} cannot be parsed: {e}") from None
    if not isinstance(raw, dict):
        raise UserError(f"--config: {path} must hold a table of keys, got {type(raw).__name__}")
    out = {}
    for k, v in raw.items():
        key = str(k).replace("-", "_")
        if key not in KEYS or key == "config":
            raise UserError(f"--config: {path}: unknown key {k!r}")
        out[key] = v
    return out


def _coerce(key: str, value):
    """A value from a config file (or an already typed one) as the field's type."""
    if value is None:
        return None
    try:
        if key in _BOOL:
            if not isinstance(value, bool):
                raise ValueError
            return value
        if key in _INT:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if key in _FLOAT:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
    except (TypeError, ValueError):
        kind = "an integer" if key in _INT else "a number" if key in _FLOAT else "true or false"
        raise UserError(f"{flag(key)} must be {kind}, got {value!r}") from None
    if key in ("seeds", "methods") and isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return value


def _check_range(cfg: TrainConfig) -> None:
    def need(cond: bool, key: str, what: str):
        if not cond:
            raise UserError(f"{flag(key)} must be {what}, got {getattr(cfg, key)!r}")

    for key in _FLOAT:
        v = getattr(cfg, key)
        need(v is None or math.isfinite(v), key, "a finite number")
    for key in (
        "steps",
        "batch_size",
        "eval_batch_size",
        "num_virtual_tokens",
        "encoder_hidden_size",
        "target_steps",
        "patience",
    ):
        need(getattr(cfg, key) >= 1, key, ">= 1")
    need(cfg.max_length >= 3, "max_length", ">= 3 (<s>, one token, </s>)")
    need(cfg.threads is None or cfg.threads >= 1, "threads", ">= 1")
    need(
        cfg.encoder_input_size is None or cfg.encoder_input_size >= 1, "encoder_input_size", ">= 1"
    )
    need(0.0 <= cfg.prompt_dropout < 1.0, "prompt_dropout", "in [0, 1)")
    need(cfg.lr > 0, "lr", "> 0")
    need(cfg.lr_prompt > 0, "lr_prompt", "> 0")
    need(cfg.weight_decay >= 0, "weight_decay", ">= 0")
    need(0.0 <= cfg.warmup <= 1.0, "warmup", "in [0, 1]")
    need(0.0 <= cfg.target_warmup <= 1.0, "target_warmup", "in [0, 1]")
    need(cfg.grad_clip >= 0, "grad_clip", ">= 0 (0 = off)")
    for key, allowed in _CHOICES.items():
        need(
            getattr(cfg, key) in allowed,
            key,
            "one of " + ", ".join(str(a) for a in allowed if a is not None),
        )
    if cfg.eval_every != "epoch":
        try:
            cfg.eval_every = int(cfg.eval_every)
        except (TypeError, ValueError):
            raise UserError(
                f"--eval-every must be a number of steps or 'epoch', got {cfg.eval_every!r}"
            ) from None
        need(cfg.eval_every >= 1, "eval_every", ">= 1 or 'epoch'")


def _resolve_method(cfg: TrainConfig, given: set[str]) -> None:
    if cfg.methods is not None:
        if given & {"method", "encoder_ratio"}:
            raise UserError(
                "--methods runs a grid of methods: leave out --method and --encoder-ratio"
            )
        tags = [t for t in str(cfg.methods).split(",") if t.strip()]
        if not tags:
            raise UserError("--methods is empty")
        cfg.methods = [method_tag(*parse_method(t)) for t in tags]
        if len(set(cfg.methods)) != len(cfg.methods):
            raise UserError(f"--methods names a method twice: {','.join(cfg.methods)}")
        cfg.method, cfg.encoder_ratio = parse_method(cfg.methods[0])
        return
    r = cfg.encoder_ratio
    if r is not None and not (math.isfinite(r) and 0.0 <= r <= 1.0):
        raise UserError(
            f"--encoder-ratio must be in [0, 1] (0 = SPT, 1 = XPE, between = DUAL), got {r}"
        )
    if r is None:
        cfg.encoder_ratio = METHOD_RATIOS[cfg.method]
        return
    implied = "spt" if r == 0 else "xpe" if r == 1 else "dual"
    if "method" not in given:
        cfg.method = implied
    elif implied != cfg.method:
        raise UserError(
            f"--method {cfg.method} does not match --encoder-ratio {r} (that is {implied})"
        )


def _check_prompt_split(cfg: TrainConfig) -> None:
    from .prompt import split_virtual_tokens

    for tag in cfg.methods or [cfg.tag]:
        _, r = parse_method(tag)
        try:
            split_virtual_tokens(cfg.num_virtual_tokens, r)
        except ValueError as e:
            raise UserError(f"--num-virtual-tokens: {e}") from None


def _parse_seeds(value) -> list[int]:
    text = ",".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)
    try:
        seeds = [int(s) for s in text.replace(" ", "").split(",") if s != ""]
    except ValueError:
        raise UserError(f"--seeds must be comma-separated integers, got {value!r}") from None
    if not seeds:
        raise UserError("--seeds is empty")
    if any(s < 0 for s in seeds):
        raise UserError(f"--seeds must be >= 0, got {value!r}")
    if len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds names a seed twice: {value!r}")
    return seeds


def check_file_values(file_cfg: dict, path) -> None:
    """Every value of a --config file is checked (type, choices, range), also those the
    command line overrides: a wrong value in the file is a mistake either way."""
    if not file_cfg:
        return
    try:
        values = {k: _coerce(k, v) for k, v in file_cfg.items()}
        values["seeds"] = _parse_seeds(values.get("seeds", "0"))
        _check_range(TrainConfig(**values))
    except UserError as e:
        raise UserError(f"--config {path}: {e}") from None
    except TypeError as e:  # a list or table where a plain value belongs
        raise UserError(f"--config {path}: {e}") from None


def resolve_config(args: argparse.Namespace) -> TrainConfig:
    """Defaults < preset < --config file < command line; every value checked."""
    cli = {k: v for k, v in vars(args).items() if k != "config"}
    file_cfg = load_config_file(args.config) if getattr(args, "config", None) else {}
    merged: dict = {}
    preset = cli.get("preset", file_cfg.get("preset"))
    if preset == "paper":
        merged.update(PAPER_PRESET)
    elif preset is not None:
        raise UserError(f"--preset: unknown preset {preset!r} (known: paper)")
    check_file_values(file_cfg, args.config)
    merged.update(file_cfg)
    merged.update(cli)
    given = set(file_cfg) | set(cli)
    values = {k: _coerce(k, v) for k, v in merged.items()}
    values["seeds"] = _parse_seeds(values.get("seeds", "0"))
    cfg = TrainConfig(**values)
    _check_range(cfg)
    _resolve_method(cfg, given)
    _check_prompt_split(cfg)
    from .distributed import launched_by_torchrun

    if cfg.output_dir is None and not launched_by_torchrun():  # ranks need one name: given
        src = str(cfg.source).replace(",", "+")[:40]
        name = "grid" if cfg.methods else cfg.method
        cfg.output_dir = str(Path("runs") / f"{name}-{src}-{datetime.now():%Y%m%d-%H%M%S}")
    return cfg
