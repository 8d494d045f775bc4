"""Train SPT / XPE / DUAL prompts on SIB-200 with a frozen encoder and evaluate them on every
target language, by language group.

    python -m xpe_fast.train                      # XPE on Joshi5, short schedule, zero-shot
    python -m xpe_fast.train --method dual --encoder-ratio 0.3 --source enarzho --seeds 0,1,2
    python -m xpe_fast.train --preset paper       # the paper's full recipe (24,000 steps)
    python -m xpe_fast.train --output-dir runs/x --resume   # continue an interrupted run

Every flag can also come from --config FILE (.json or .toml, the same keys with "_" or "-").
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import random
import sys
import time
from datetime import datetime
from pathlib import Path

import torch

from . import data as D
from .adapter import (atomic_save_tensors, atomic_write_json, load_adapter, save_adapter,
                      trainable_state)
from .cli_common import UserError, run_cli
from .evaluate import (autocast, evaluate_encoded, evaluate_languages, format_group_table,
                       group_means, resolve_precision, write_accuracy_csv)
from .languages import resolve_languages

log = logging.getLogger("xpe_fast.train")

DEFAULTS = dict(
    method="xpe", encoder_ratio=None, num_virtual_tokens=20, encoder_hidden_size=256,
    prompt_dropout=0.1, source="joshi5", targets="all-wo-joshi5", regime="zero-shot",
    steps=150, target_steps=100, batch_size=32, eval_batch_size=64, lr_prompt=5e-3, lr=1e-2,
    weight_decay=0.01, warmup=0.1, target_warmup=0.05, schedule="cosine", optimizer="adamw",
    grad_clip=1.0, eval_every=50, patience=20, max_length=164, precision="auto",
    seeds="0", backbone="e5-small", tokenizer=None, data_dir=None, output_dir=None,
    backend=None, threads=None, preset=None, resume=False, progress=True,
)

# The reference code's recipe after its runtime overrides (XPE_SPEC.md).
PAPER_PRESET = dict(
    steps=24000, target_steps=6000, optimizer="adafactor", lr=5e-5, lr_prompt=5e-3,
    weight_decay=0.01, warmup=0.1, target_warmup=0.05, schedule="cosine-restarts",
    eval_every="epoch", patience=20, precision="bf16", seeds="0,1,2,3,4,5,6,7,8,9",
    batch_size=32, max_length=164,
)

# Keys that may change between an interrupted run and its resumption.
VOLATILE = {"resume", "threads", "progress", "output_dir", "backend", "config"}


# ---- configuration -------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m xpe_fast.train", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    S = argparse.SUPPRESS
    g = ap.add_argument_group("method")
    g.add_argument("--method", choices=["spt", "xpe", "dual"], default=S,
                   help="spt (r=0), xpe (r=1) or dual (0<r<1) [xpe]")
    g.add_argument("--encoder-ratio", type=float, default=S,
                   help="share of XPE tokens; default 0 / 1 / 0.7 for spt / xpe / dual")
    g.add_argument("--num-virtual-tokens", type=int, default=S, help="N [20]")
    g.add_argument("--encoder-hidden-size", type=int, default=S, help="MLP width h [256]")
    g.add_argument("--prompt-dropout", type=float, default=S, help="MLP dropout on sources [0.1]")
    g = ap.add_argument_group("data")
    g.add_argument("--source", default=S, help="source group or codes: joshi5, enarzho, "
                   "seen-92, or a comma-separated list [joshi5]")
    g.add_argument("--targets", default=S, help="target languages or groups [all-wo-joshi5]")
    g.add_argument("--regime", choices=["zero-shot", "supervised"], default=S,
                   help="supervised also trains on each target's own train split [zero-shot]")
    g.add_argument("--data-dir", default=S, help="SIB-200 folder, or the hub id "
                   f"{D.HUB_DATASET} [$XPE_FAST_DATA_DIR, ./shared/sib200, ../shared/sib200]")
    g.add_argument("--max-length", type=int, default=S, help="tokens per input [164]")
    g = ap.add_argument_group("optimization")
    g.add_argument("--steps", type=int, default=S, help="training steps on the sources [150]")
    g.add_argument("--target-steps", type=int, default=S,
                   help="steps per target language in the supervised regime [100]")
    g.add_argument("--batch-size", type=int, default=S, help="[32]")
    g.add_argument("--eval-batch-size", type=int, default=S, help="[64]")
    g.add_argument("--lr-prompt", type=float, default=S, help="lr of the prompt tables [5e-3]")
    g.add_argument("--lr", type=float, default=S, help="lr of the MLP and head [1e-2]")
    g.add_argument("--weight-decay", type=float, default=S,
                   help="weight decay of the MLP and head (prompt tables: 0) [0.01]")
    g.add_argument("--warmup", type=float, default=S, help="warm-up share of the steps [0.1]")
    g.add_argument("--target-warmup", type=float, default=S, help="[0.05]")
    g.add_argument("--schedule", choices=["cosine", "cosine-restarts", "linear", "constant"],
                   default=S, help="[cosine]")
    g.add_argument("--optimizer", choices=["adamw", "adafactor"], default=S, help="[adamw]")
    g.add_argument("--grad-clip", type=float, default=S, help="[1.0]")
    g.add_argument("--eval-every", default=S,
                   help="evaluate on the source dev sets every K steps, or 'epoch' [50]")
    g.add_argument("--patience", type=int, default=S,
                   help="early stopping: evaluations without a lower dev loss, counted "
                   "after half the steps [20]")
    g.add_argument("--precision", choices=["auto", "fp32", "bf16"], default=S,
                   help="auto = bf16 autocast where the CPU has AMX / AVX-512 bf16, else fp32")
    g.add_argument("--seeds", default=S, help="comma-separated seeds, one run each [0]")
    g = ap.add_argument_group("run")
    g.add_argument("--preset", choices=["paper"], default=S,
                   help="paper: the full recipe of XPE_SPEC.md (24,000 steps, 10 seeds)")
    g.add_argument("--backbone", default=S,
                   help="e5-small (embedded), a hub id or a local model folder [e5-small]")
    g.add_argument("--tokenizer", default=S, help="a tokenizer.json to use instead")
    g.add_argument("--output-dir", default=S, help="[runs/<method>-<source>-<time>]")
    g.add_argument("--backend", choices=["reference", "cpu", "triton", "cuda"], default=S,
                   help="backend of the fused ops [best available]")
    g.add_argument("--threads", type=int, default=S, help="torch threads [torch's default]")
    g.add_argument("--resume", action="store_true", default=S,
                   help="continue the run in --output-dir")
    g.add_argument("--no-progress", dest="progress", action="store_false", default=S)
    g.add_argument("--config", default=None, help="a .json or .toml file with these keys")
    return ap


def load_config_file(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file {path} does not exist")
    try:
        if p.suffix == ".toml":
            import tomllib
            raw = tomllib.loads(p.read_text())
        else:
            raw = json.loads(p.read_text())
    except Exception as e:
        raise UserError(f"config file {path} cannot be parsed: {e}") from None
    out = {}
    for k, v in raw.items():
        key = k.replace("-", "_")
        if key not in DEFAULTS:
            raise UserError(f"config file {path}: unknown key {k!r}")
        out[key] = v
    return out


def resolve_config(args: argparse.Namespace) -> dict:
    cli = {k: v for k, v in vars(args).items() if k != "config"}
    cfg = dict(DEFAULTS)
    file_cfg = load_config_file(args.config) if args.config else {}
    preset = cli.get("preset", file_cfg.get("preset"))
    if preset == "paper":
        cfg.update(PAPER_PRESET)
    elif preset is not None:
        raise UserError(f"unknown preset {preset!r}")
    cfg.update(file_cfg)
    cfg.update(cli)
    method = cfg["method"]
    if cfg["encoder_ratio"] is None:
        cfg["encoder_ratio"] = {"spt": 0.0, "xpe": 1.0, "dual": 0.7}[method]
    r = float(cfg["encoder_ratio"])
    want = "spt" if r == 0 else "xpe" if r == 1 else "dual"
    if want != method:
        raise UserError(f"--method {method} does not match --encoder-ratio {r} (that is {want})")
    for key in ("steps", "batch_size", "eval_batch_size", "num_virtual_tokens", "max_length"):
        if int(cfg[key]) < 1:
            raise UserError(f"--{key.replace('_', '-')} must be >= 1, got {cfg[key]}")
    if cfg["eval_every"] != "epoch":
        try:
            cfg["eval_every"] = int(cfg["eval_every"])
        except (TypeError, ValueError):
            raise UserError(f"--eval-every must be a number of steps or 'epoch', got "
                            f"{cfg['eval_every']!r}") from None
    try:
        cfg["seeds"] = [int(s) for s in str(cfg["seeds"]).replace(" ", "").split(",") if s != ""]
    except ValueError:
        raise UserError(f"--seeds must be comma-separated integers, got {cfg['seeds']!r}") from None
    if not cfg["seeds"]:
        raise UserError("--seeds is empty")
    cfg["precision"] = resolve_precision(cfg["precision"])
    if cfg["output_dir"] is None:
        src = str(cfg["source"]).replace(",", "+")[:40]
        cfg["output_dir"] = str(Path("runs") / f"{method}-{src}-{datetime.now():%Y%m%d-%H%M%S}")
    return cfg


def prepare_output_dir(cfg: dict) -> Path:
    out = Path(cfg["output_dir"])
    marker = out / "run_config.json"
    stable = {k: v for k, v in cfg.items() if k not in VOLATILE}
    if out.exists() and any(out.iterdir()):
        if not marker.is_file():
            raise UserError(f"output folder {out} is not empty and holds no xpe_fast run; "
                            "choose another --output-dir")
        saved = json.loads(marker.read_text())
        saved_stable = {k: v for k, v in saved.items() if k not in VOLATILE}
        if not cfg["resume"]:
            raise UserError(f"output folder {out} already holds a run; pass --resume to "
                            "continue it, or choose another --output-dir")
        if saved_stable != stable:
            diff = sorted(k for k in set(stable) | set(saved_stable)
                          if stable.get(k) != saved_stable.get(k))
            raise UserError(f"output folder {out} holds another run (settings differ: "
                            f"{', '.join(diff)}); choose another --output-dir")
    elif cfg["resume"]:
        raise UserError(f"--resume: {out} holds no run to resume")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(marker, cfg)
    return out


# ---- optimization --------------------------------------------------------------------

def param_groups(model, cfg):
    prompt_tables, rest = [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (prompt_tables if n in ("prompt.spt_embedding", "prompt.xpe_embedding") else rest).append(p)
    groups = [{"params": prompt_tables, "lr": cfg["lr_prompt"], "weight_decay": 0.0},
              {"params": rest, "lr": cfg["lr"], "weight_decay": cfg["weight_decay"]}]
    return [g for g in groups if g["params"]]


def make_optimizer(model, cfg):
    groups = param_groups(model, cfg)
    if cfg["optimizer"] == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(groups, lr=cfg["lr"], scale_parameter=False, relative_step=False,
                         warmup_init=False)
    return torch.optim.AdamW(groups, lr=cfg["lr"])


def make_scheduler(opt, cfg, steps: int, warmup: float):
    from transformers import optimization as O

    w = int(round(warmup * steps))
    s = cfg["schedule"]
    if s == "cosine":
        return O.get_cosine_schedule_with_warmup(opt, w, steps)
    if s == "cosine-restarts":
        return O.get_cosine_with_hard_restarts_schedule_with_warmup(opt, w, steps, num_cycles=2)
    if s == "linear":
        return O.get_linear_schedule_with_warmup(opt, w, steps)
    return O.get_constant_schedule_with_warmup(opt, w)


def set_seed(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np
        np.random.seed(seed % 2**32)
    except ImportError:
        pass


# ---- checkpoints (resume) ------------------------------------------------------------

def save_checkpoint(folder: Path, model, opt, sched, state: dict) -> None:
    """Everything needed to continue exactly: trainable tensors, optimizer state, schedule,
    step, RNG state, best-so-far. Tensors in safetensors, the rest in JSON; atomic."""
    tensors = {f"model.{k}": v for k, v in trainable_state(model).items()}
    osd = opt.state_dict()
    opt_meta = {"param_groups": osd["param_groups"], "state": {}}
    for pid, st in osd["state"].items():
        opt_meta["state"][str(pid)] = {}
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"opt.{pid}.{k}"] = v
                opt_meta["state"][str(pid)][k] = "__tensor__"
            else:
                opt_meta["state"][str(pid)][k] = v
    tensors["rng.torch"] = torch.get_rng_state()
    if state.get("best_tensors"):
        for k, v in state["best_tensors"].items():
            tensors[f"best.{k}"] = v
    meta = {k: v for k, v in state.items() if k != "best_tensors"}
    meta["optimizer"] = opt_meta
    meta["scheduler"] = sched.state_dict()
    meta["rng_python"] = random.getstate()
    atomic_save_tensors(folder / "checkpoint.safetensors", tensors)
    atomic_write_json(folder / "checkpoint.json", meta)


def load_checkpoint(folder: Path, model, opt, sched) -> dict | None:
    from safetensors.torch import load_file

    if not (folder / "checkpoint.json").is_file():
        return None
    meta = json.loads((folder / "checkpoint.json").read_text())
    tensors = load_file(str(folder / "checkpoint.safetensors"))
    own = dict(model.named_parameters())
    with torch.no_grad():
        for k, v in tensors.items():
            if k.startswith("model."):
                own[k[6:]].copy_(v)
    opt_state = {}
    for pid, st in meta["optimizer"]["state"].items():
        opt_state[int(pid)] = {k: (tensors[f"opt.{pid}.{k}"] if v == "__tensor__" else v)
                               for k, v in st.items()}
    opt.load_state_dict({"state": opt_state, "param_groups": meta["optimizer"]["param_groups"]})
    sched.load_state_dict(meta["scheduler"])
    torch.set_rng_state(tensors["rng.torch"])
    rs = meta["rng_python"]
    random.setstate((rs[0], tuple(rs[1]), rs[2]))
    meta["best_tensors"] = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")} or None
    return meta


# ---- training ------------------------------------------------------------------------

def train_phase(model, train: D.Encoded, dev: D.Encoded, cfg: dict, *, steps: int, warmup: float,
                seed: int, pad_id: int, folder: Path, desc: str, device: torch.device) -> dict:
    """Trains `model` in place and leaves it holding the best dev-accuracy weights.
    Checkpoints into `folder` at each evaluation; resumes from there if a checkpoint exists."""
    from tqdm.auto import tqdm

    opt = make_optimizer(model, cfg)
    sched = make_scheduler(opt, cfg, steps, warmup)
    batch = cfg["batch_size"]
    steps_per_epoch = max(1, math.ceil(len(train.ids) / batch))
    eval_every = steps_per_epoch if cfg["eval_every"] == "epoch" else int(cfg["eval_every"])
    eval_every = max(1, min(eval_every, steps))
    lengths = [len(s) for s in train.ids]
    state = {"step": 0, "best_acc": -1.0, "best_step": 0, "best_loss": float("inf"),
             "bad_evals": 0, "history": [], "stopped_early": False, "best_tensors": None}
    resumed = load_checkpoint(folder, model, opt, sched) if cfg["resume"] else None
    if resumed:
        state.update({k: resumed[k] for k in state if k in resumed})
        log.info("%s: resumed at step %d", desc, state["step"])
    precision = cfg["precision"]

    def batches_from(step):
        # Deterministic per (seed, epoch): a resumed run sees the same batches.
        epoch, within = divmod(step, steps_per_epoch)
        while True:
            order = D.length_grouped_batches(lengths, batch, random.Random(seed * 100003 + epoch))
            for b in order[within:]:
                yield b
            epoch, within = epoch + 1, 0

    it = batches_from(state["step"])
    bar = tqdm(total=steps, initial=state["step"], desc=desc, disable=not cfg["progress"],
               unit="step", file=sys.stderr,
               mininterval=0.5 if sys.stderr.isatty() else 60)
    t0 = time.time()
    while state["step"] < steps and not state["stopped_early"]:
        model.train()
        idx = next(it)
        ids, mask, labels = D.collate([train.ids[i] for i in idx],
                                      [train.labels[i] for i in idx], pad_id)
        ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
        with autocast(precision, device):
            loss, _ = model(ids, mask, labels=labels)
        loss.backward()
        if cfg["grad_clip"]:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad],
                                           cfg["grad_clip"])
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        state["step"] += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if state["step"] % eval_every == 0 or state["step"] == steps:
            acc, dloss, _ = evaluate_encoded(model, dev, cfg["eval_batch_size"], pad_id,
                                             precision, device)
            state["history"].append({"step": state["step"], "dev_accuracy": acc,
                                     "dev_loss": dloss, "train_loss": loss.item(),
                                     "seconds": time.time() - t0})
            log.info("%s step %d: train loss %.4f, dev loss %.4f, dev accuracy %.4f", desc,
                     state["step"], loss.item(), dloss, acc)
            if acc > state["best_acc"]:
                state.update(best_acc=acc, best_step=state["step"])
                state["best_tensors"] = {k: v.clone() for k, v in trainable_state(model).items()}
            if dloss < state["best_loss"]:
                state.update(best_loss=dloss, bad_evals=0)
            elif state["step"] > steps // 2:
                state["bad_evals"] += 1
                if state["bad_evals"] >= cfg["patience"]:
                    state["stopped_early"] = True
                    log.info("%s: early stop at step %d (dev loss has not improved in %d "
                             "evaluations)", desc, state["step"], cfg["patience"])
            save_checkpoint(folder, model, opt, sched, state)
    bar.close()
    if state["best_tensors"]:
        own = dict(model.named_parameters())
        with torch.no_grad():
            for k, v in state["best_tensors"].items():
                own[k].copy_(v)
    return {k: v for k, v in state.items() if k != "best_tensors"}


def run_seed(seed: int, cfg: dict, bb, dataset, sources, targets, out: Path,
             device: torch.device) -> dict:
    from .model import PromptedEncoderForSequenceClassification

    folder = out / f"seed-{seed}"
    done = folder / "results.json"
    if done.is_file():
        log.info("seed %d already finished; reusing %s", seed, done)
        return json.loads(done.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    set_seed(seed)
    model = PromptedEncoderForSequenceClassification(
        bb.model, len(D.LABELS), num_virtual_tokens=cfg["num_virtual_tokens"],
        encoder_ratio=cfg["encoder_ratio"], encoder_hidden_size=cfg["encoder_hidden_size"],
        prompt_dropout=cfg["prompt_dropout"], backend=cfg["backend"]).to(device)
    max_len = min(cfg["max_length"], model.max_input_length)
    train = D.concat([D.encode(bb.tokenizer, dataset.split(l, "train"), max_len, l)
                      for l in sources])
    dev = D.concat([D.encode(bb.tokenizer, dataset.split(l, "dev"), max_len, l) for l in sources])
    log.info("seed %d: %d trainable parameters; %d source training examples (%d truncated to "
             "%d tokens), %d dev examples", seed, model.num_trainable_parameters(),
             len(train.ids), train.n_truncated, max_len, len(dev.ids))
    t0 = time.time()
    adapter_dir = folder / "adapter"
    if (adapter_dir / "adapter_config.json").is_file() and (folder / "source_done.json").is_file():
        load_adapter(adapter_dir, model, bb.name)
        phase = json.loads((folder / "source_done.json").read_text())
    else:
        phase = train_phase(model, train, dev, cfg, steps=cfg["steps"], warmup=cfg["warmup"],
                            seed=seed, pad_id=bb.pad_token_id, folder=folder,
                            desc=f"seed {seed} train", device=device)
        save_adapter(model, adapter_dir, bb.name, list(D.LABELS),
                     extra={"seed": seed, "source": sources, "best_step": phase["best_step"],
                            "dev_accuracy": phase["best_acc"]})
        atomic_write_json(folder / "source_done.json", phase)
    train_seconds = time.time() - t0
    log.info("seed %d: best source dev accuracy %.4f at step %d (%.0f s)", seed,
             phase["best_acc"], phase["best_step"], train_seconds)

    t1 = time.time()
    zs = evaluate_languages(model, bb.tokenizer, dataset, targets, "test", max_len,
                            cfg["eval_batch_size"], bb.pad_token_id, cfg["precision"], device,
                            progress=cfg["progress"])
    eval_seconds = time.time() - t1
    write_accuracy_csv(folder / "zero_shot_accuracy.csv", zs)
    result = {"seed": seed, "source_dev_accuracy": phase["best_acc"],
              "best_step": phase["best_step"], "steps_run": phase["step"],
              "train_seconds": train_seconds, "eval_seconds": eval_seconds,
              "zero_shot": {k: v["accuracy"] for k, v in zs.items()},
              "truncated_test_inputs": sum(v["truncated"] for v in zs.values())}

    if cfg["regime"] == "supervised":
        sup = {}
        base = copy.deepcopy({k: v.clone() for k, v in trainable_state(model).items()})
        for lang in targets:
            lang_dir = folder / "supervised" / lang
            res_file = lang_dir / "result.json"
            if res_file.is_file():
                sup[lang] = json.loads(res_file.read_text())
                continue
            own = dict(model.named_parameters())
            with torch.no_grad():
                for k, v in base.items():
                    own[k].copy_(v)
            model.prompt.set_dropout(0.0)
            lang_dir.mkdir(parents=True, exist_ok=True)
            tr = D.encode(bb.tokenizer, dataset.split(lang, "train"), max_len, lang)
            dv = D.encode(bb.tokenizer, dataset.split(lang, "dev"), max_len, lang)
            train_phase(model, tr, dv, cfg, steps=cfg["target_steps"],
                        warmup=cfg["target_warmup"], seed=seed, pad_id=bb.pad_token_id,
                        folder=lang_dir, desc=f"seed {seed} {lang}", device=device)
            te = D.encode(bb.tokenizer, dataset.split(lang, "test"), max_len, lang)
            acc, loss, _ = evaluate_encoded(model, te, cfg["eval_batch_size"], bb.pad_token_id,
                                            cfg["precision"], device)
            sup[lang] = {"accuracy": acc, "n": len(te.ids), "truncated": te.n_truncated,
                         "loss": loss}
            atomic_write_json(res_file, sup[lang])
        write_accuracy_csv(folder / "supervised_accuracy.csv", sup)
        result["supervised"] = {k: v["accuracy"] for k, v in sup.items()}
        model.prompt.set_dropout(cfg["prompt_dropout"])

    atomic_write_json(done, result)
    return result


def summarize(results: list[dict], cfg: dict, out: Path, wall: float) -> dict:
    regimes = ["zero_shot"] + (["supervised"] if cfg["regime"] == "supervised" else [])
    summary = {"config": cfg, "seeds": [r["seed"] for r in results], "wall_seconds": wall,
               "source_dev_accuracy": [r["source_dev_accuracy"] for r in results],
               "groups": {}, "per_language": {}}
    for reg in regimes:
        per_seed = [group_means(r[reg]) for r in results]
        rows = {}
        for g in per_seed[0]:
            vals = [ps[g]["mean"] for ps in per_seed if g in ps]
            mean = sum(vals) / len(vals)
            std = (sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) ** 0.5 \
                if len(vals) > 1 else None
            rows[g] = {"mean": mean, "std": std, "per_seed": vals,
                       "languages": per_seed[0][g]["languages"],
                       "group_size": per_seed[0][g]["group_size"]}
        summary["groups"][reg] = rows
        langs = list(results[0][reg])
        summary["per_language"][reg] = {
            l: sum(r[reg][l] for r in results) / len(results) for l in langs}
    atomic_write_json(out / "summary.json", summary)
    write_mean_csv(out / "accuracy.csv", summary)
    try:
        plot_accuracy(out / "accuracy.png", summary)
    except Exception as e:  # a plot must never lose the results
        log.warning("could not draw the plot: %s", e)
    return summary


def write_mean_csv(path: Path, summary: dict) -> None:
    per = {}
    for reg, langs in summary["per_language"].items():
        for l, acc in langs.items():
            per.setdefault(l, {})[reg] = acc
    from .adapter import atomic_write_text
    from .languages import groups_of, language_table

    t = language_table()
    regs = list(summary["per_language"])
    lines = ["language,name," + ",".join(f"{r}_accuracy" for r in regs) + ",groups"]
    for l, accs in per.items():
        name = t[l].name.replace('"', "'") if l in t else ""
        lines.append(f'{l},"{name}",' + ",".join(f"{accs.get(r, float('nan')):.4f}" for r in regs)
                     + "," + ";".join(groups_of(l)))
    atomic_write_text(path, "\n".join(lines) + "\n")


def plot_accuracy(path: Path, summary: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .adapter import atomic_write_bytes
    from .languages import language_table

    t = language_table()
    accs = summary["per_language"]["zero_shot"]
    items = sorted(accs.items(), key=lambda kv: kv[1])

    def color(code):
        lang = t.get(code)
        if lang is None:
            return "#999999"
        if lang.low_performing:
            return "#d62728"
        return "#ff7f0e" if not lang.xlmr_seen else "#1f77b4"

    fig, ax = plt.subplots(figsize=(max(8, 0.09 * len(items)), 4.5), dpi=110)
    ax.bar(range(len(items)), [100 * a for _, a in items], color=[color(c) for c, _ in items],
           width=0.85)
    ax.axhline(100 / 7, color="k", lw=0.8, ls="--")
    ax.set_xticks(range(len(items)))
    ax.set_xticklabels([c for c, _ in items], rotation=90, fontsize=4)
    ax.set_ylabel("zero-shot accuracy %")
    cfg = summary["config"]
    ax.set_title(f"{cfg['method'].upper()} (r={cfg['encoder_ratio']}), source {cfg['source']}, "
                 f"seeds {summary['seeds']}", fontsize=9)
    from matplotlib.patches import Patch
    ax.legend(handles=[Patch(color="#1f77b4", label="seen by XLM-R"),
                       Patch(color="#ff7f0e", label="unseen"),
                       Patch(color="#d62728", label="low-performing (unseen)"),
                       plt.Line2D([], [], color="k", ls="--", lw=0.8, label="chance 14.3 %")],
              fontsize=7, loc="upper left")
    ax.set_xlim(-1, len(items))
    fig.tight_layout()
    import io
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def setup_logging(out: Path) -> None:
    log.setLevel(logging.INFO)
    for h in list(log.handlers):
        log.removeHandler(h)
    fh = logging.FileHandler(out / "train.log", encoding="utf-8")
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    sh = logging.StreamHandler(sys.stderr)
    sh.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(fh)
    log.addHandler(sh)
    log.propagate = False


def run(args) -> int:
    from . import backbones

    cfg = resolve_config(args)
    if cfg["threads"]:
        torch.set_num_threads(int(cfg["threads"]))
    sources = resolve_languages(cfg["source"])
    targets = resolve_languages(cfg["targets"])
    dataset = D.SIB200(cfg["data_dir"])
    # Check every split we will read before any work (a missing split fails now, not later).
    need = [(l, s) for l in sources for s in ("train", "dev")] + [(l, "test") for l in targets]
    if cfg["regime"] == "supervised":
        need += [(l, s) for l in targets for s in ("train", "dev")]
    if not dataset.hub:
        for l, s in need:
            if not (dataset.root / l / f"{s}.tsv").is_file():
                raise D.DataError(f"language {l} has no {s} split in {dataset.root}")
    out = prepare_output_dir(cfg)
    setup_logging(out)
    log.info("xpe_fast.train: %s (r=%s), N=%d, source %s (%d languages), %d targets, %s, "
             "%d steps, precision %s, %d threads; output %s", cfg["method"],
             cfg["encoder_ratio"], cfg["num_virtual_tokens"], cfg["source"], len(sources),
             len(targets), cfg["regime"], cfg["steps"], cfg["precision"],
             torch.get_num_threads(), out)
    t0 = time.time()
    bb = backbones.load(cfg["backbone"], cfg["tokenizer"])
    device = torch.device("cpu")
    results = [run_seed(s, cfg, bb, dataset, sources, targets, out, device) for s in cfg["seeds"]]
    wall = time.time() - t0
    summary = summarize(results, cfg, out, wall)
    print()
    for reg, rows in summary["groups"].items():
        print(format_group_table(rows, f"{cfg['method'].upper()} from {cfg['source']}, "
                                       f"{reg.replace('_', '-')}, {len(results)} seed(s):"))
    print("source dev accuracy: " + ", ".join(f"{100 * a:.1f}" for a in
                                                 summary["source_dev_accuracy"]))
    print(f"wall time {wall / 60:.1f} min; results in {out}/ (summary.json, accuracy.csv, "
          "accuracy.png, train.log, seed-*/adapter)")
    return 0


def main(argv=None) -> int:
    return run_cli(run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
