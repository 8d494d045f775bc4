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

from .errors import UserError
from .settings import (  # noqa: F401 (the settings, re-exported beside their parser)
    METHOD_RATIOS,
    PAPER_PRESET,
    VOLATILE,
    TrainConfig,
    method_tag,
    parse_method,
)

KEYS = {f.name for f in fields(TrainConfig)}
_KIND = {f.name: f.metadata["kind"] for f in fields(TrainConfig)}
_INT = {k for k, v in _KIND.items() if v == "int"}
_FLOAT = {k for k, v in _KIND.items() if v == "float"}
_BOOL = {k for k, v in _KIND.items() if v == "bool"}
_CHOICES = {f.name: f.metadata["choices"] for f in fields(TrainConfig) if f.metadata["choices"]}
_TYPES = {"int": int, "float": float}


def flag(key: str) -> str:
    return "--" + key.replace("_", "-")


# ---- the command line ----------------------------------------------------------------


def build_parser(doc: str = "") -> argparse.ArgumentParser:
    """The command line, derived from TrainConfig's fields: each flag's group, help, type,
    choices and shown default are written there, once. Every flag defaults to "absent", so
    that a preset and a --config file can tell what the command line set."""
    ap = argparse.ArgumentParser(
        prog="python -m xpe_fast.train", description=doc.split("\n\n")[0] or None
    )
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in fields(TrainConfig):
        m = f.metadata
        g = groups.get(m["group"]) or groups.setdefault(
            m["group"], ap.add_argument_group(m["group"])
        )
        extra = dict(m["flag"])
        name = extra.pop("name", flag(f.name))
        if m["kind"] in _TYPES:
            extra["type"] = _TYPES[m["kind"]]
        if m["choices"]:
            extra["choices"] = [c for c in m["choices"] if c is not None]
        g.add_argument(name, dest=f.name, default=argparse.SUPPRESS, help=_help(f), **extra)
    ap.add_argument("--config", default=None, help="a .json or .toml file with these keys")
    return ap


def _help(f) -> str:
    m = f.metadata
    if m["kind"] == "bool":
        return m["help"]
    shown = m["shown"]
    if shown is None and f.default is not None and not callable(f.default_factory):
        shown = f.default
    return f"{m['help']} [{shown}]" if shown is not None else m["help"]


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
