"""The training loop of one phase (the sources, or one target language in the supervised
regime): optimizer, schedule, batches, dev evaluations, model selection, early stopping and
checkpoints."""

from __future__ import annotations

import logging
import math
import random
import sys
import time
from pathlib import Path

import torch

from . import data as D
from . import fast_dropout
from .adapter import trainable_state
from .checkpoint import load_checkpoint, save_checkpoint
from .device import autocast
from .distributed import World
from .evaluation import evaluate_encoded
from .settings import TrainConfig

log = logging.getLogger("xpe_fast.loop")

PROMPT_TABLES = ("prompt.spt_embedding", "prompt.xpe_embedding")


def param_groups(model, cfg: TrainConfig):
    """Prompt tables at lr_prompt without weight decay; the MLP and head at lr."""
    prompt_tables, rest = [], []
    for n, p in model.named_parameters():
        if p.requires_grad:
            (prompt_tables if n in PROMPT_TABLES else rest).append(p)
    groups = [
        {"params": prompt_tables, "lr": cfg.lr_prompt, "weight_decay": 0.0},
        {"params": rest, "lr": cfg.lr, "weight_decay": cfg.weight_decay},
    ]
    return [g for g in groups if g["params"]]


def make_optimizer(model, cfg: TrainConfig):
    groups = param_groups(model, cfg)
    if cfg.optimizer == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(
            groups, lr=cfg.lr, scale_parameter=False, relative_step=False, warmup_init=False
        )
    return torch.optim.AdamW(groups, lr=cfg.lr)


def make_scheduler(opt, cfg: TrainConfig, steps: int, warmup: float):
    from transformers import optimization as O

    w = int(round(warmup * steps))
    if cfg.schedule == "cosine":
        return O.get_cosine_schedule_with_warmup(opt, w, steps)
    if cfg.schedule == "cosine-restarts":
        return O.get_cosine_with_hard_restarts_schedule_with_warmup(opt, w, steps, num_cycles=2)
    if cfg.schedule == "linear":
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


def batches_from(lengths: list[int], batch: int, seed: int, step: int):
    """The global batches from `step` on: deterministic per (seed, epoch), so a resumed run
    sees the batches the uninterrupted one would have seen."""
    steps_per_epoch = max(1, math.ceil(len(lengths) / batch))
    epoch, within = divmod(step, steps_per_epoch)
    while True:
        order = D.length_grouped_batches(lengths, batch, random.Random(seed * 100003 + epoch))
        yield from order[within:]
        epoch, within = epoch + 1, 0


def data_parallel(model, device: torch.device, world: World):
    """`model` wrapped in DistributedDataParallel over its trainable tensors only (the frozen
    backbone is loaded by every rank, never broadcast); `model` itself in one process."""
    if not world.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    frozen += [n for n, _ in model.named_buffers()]  # ignored: never broadcast nor synced
    DDP._set_params_and_buffers_to_ignore_for_model(model, frozen)
    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)


def fresh_state() -> dict:
    """What a phase's checkpoint carries besides the tensors and the optimizer."""
    return {
        "step": 0,
        "best_acc": -1.0,
        "best_step": 0,
        "best_loss": float("inf"),
        "bad_evals": 0,
        "history": [],
        "stopped_early": False,
        "best_tensors": None,
        "train_seconds": 0.0,
    }


def train_step(net, train: D.Encoded, idx: list[int], pad_id: int, ctx: dict):
    """One optimizer step on the global batch `idx` (this rank's contiguous share of it,
    padded to the global batch's length, dropout masks numbered by global sample index);
    returns (loss, weight of this rank's share)."""
    world, device = ctx["world"], ctx["device"]
    start, end = world.slice(len(idx))
    share = idx[start:end] or idx[:1]  # a rank left without samples weighs 0
    weight = (end - start) * world.size / len(idx)
    ids, mask, labels = D.collate(
        [train.ids[i] for i in share],
        [train.labels[i] for i in share],
        pad_id,
        length=max(len(train.ids[i]) for i in idx),
    )
    ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
    with autocast(ctx["precision"], device), fast_dropout.global_batch_offset(start):
        loss, _ = net(ids, mask, labels=labels)
    # DDP averages gradients over ranks: weighting each rank's mean by its share times
    # the world size makes that average the gradient of the global batch's mean loss.
    (loss * weight).backward()
    if ctx["cfg"].grad_clip:
        torch.nn.utils.clip_grad_norm_(ctx["trainable"], ctx["cfg"].grad_clip)
    ctx["opt"].step()
    ctx["sched"].step()
    ctx["opt"].zero_grad(set_to_none=True)
    return loss, weight


def record_evaluation(model, state: dict, loss, weight: float, dev: D.Encoded, ctx: dict):
    """A dev evaluation: history, the best weights so far by dev accuracy, early stopping
    on dev loss (counted after half the steps)."""
    cfg, world = ctx["cfg"], ctx["world"]
    acc, dloss, _ = evaluate_encoded(
        model, dev, cfg.eval_batch_size, ctx["pad_id"], ctx["precision"], ctx["device"],
        world=world,
    )  # fmt: skip
    train_loss = world.sum([loss.item() * weight])[0] / world.size
    state["train_seconds"] = ctx["seconds0"] + time.time() - ctx["t0"]
    step = state["step"]
    state["history"].append(
        {"step": step, "dev_accuracy": acc, "dev_loss": dloss, "train_loss": train_loss,
         "seconds": state["train_seconds"]}
    )  # fmt: skip
    log.info(
        "%s step %d: train loss %.4f, dev loss %.4f, dev accuracy %.4f",
        ctx["desc"], step, train_loss, dloss, acc,
    )  # fmt: skip
    if acc > state["best_acc"]:
        state.update(best_acc=acc, best_step=step)
        state["best_tensors"] = {k: v.clone() for k, v in trainable_state(model).items()}
    if dloss < state["best_loss"]:
        state.update(best_loss=dloss, bad_evals=0)
    elif step > ctx["steps"] // 2:
        state["bad_evals"] += 1
        if state["bad_evals"] >= cfg.patience:
            state["stopped_early"] = True
            log.info(
                "%s: early stop at step %d (dev loss has not improved in %d evaluations)",
                ctx["desc"], step, cfg.patience,
            )  # fmt: skip


def load_best(model, state: dict) -> None:
    if state["best_tensors"]:
        own = dict(model.named_parameters())
        with torch.no_grad():
            for k, v in state["best_tensors"].items():
                own[k].copy_(v)


def progress_bar(total: int, initial: int, desc: str, show: bool):
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        disable=not show,
        unit="step",
        file=sys.stderr,
        mininterval=0.5 if sys.stderr.isatty() else 60,
    )


def train_phase(
    model,
    train: D.Encoded,
    dev: D.Encoded,
    cfg: TrainConfig,
    *,
    steps: int,
    warmup: float,
    seed: int,
    pad_id: int,
    folder: Path,
    desc: str,
    device: torch.device,
    precision: str,
    on_checkpoint=None,
    world: World | None = None,
) -> dict:
    """Trains `model` in place and leaves it holding the best dev-accuracy weights.
    Checkpoints into `folder` at each evaluation (rank 0 writes); continues from there if a
    checkpoint exists. `on_checkpoint()` runs after each checkpoint on rank 0 (e.g. to record
    the wall time). Under torchrun (`world`) each rank computes a contiguous share of every
    global batch, padded to the global batch's length, with dropout masks numbered by
    global sample index; the loss is the mean over the global batch."""
    world = world or World()
    net = data_parallel(model, device, world)
    opt = make_optimizer(model, cfg)
    sched = make_scheduler(opt, cfg, steps, warmup)
    steps_per_epoch = max(1, math.ceil(len(train.ids) / cfg.batch_size))
    eval_every = steps_per_epoch if cfg.eval_every == "epoch" else int(cfg.eval_every)
    eval_every = max(1, min(eval_every, steps))
    state = fresh_state()
    resumed = load_checkpoint(folder, model, opt, sched)
    if resumed:
        state.update({k: resumed[k] for k in state if k in resumed})
        log.info("%s: resumed at step %d", desc, state["step"])
    it = batches_from([len(s) for s in train.ids], cfg.batch_size, seed, state["step"])
    bar = progress_bar(steps, state["step"], desc, cfg.progress and world.main)
    ctx = {
        "cfg": cfg, "world": world, "device": device, "precision": precision, "opt": opt,
        "sched": sched, "pad_id": pad_id, "desc": desc, "steps": steps, "t0": time.time(),
        "seconds0": state["train_seconds"],
        "trainable": [p for p in model.parameters() if p.requires_grad],
    }  # fmt: skip
    while state["step"] < steps and not state["stopped_early"]:
        model.train()
        loss, weight = train_step(net, train, next(it), pad_id, ctx)
        state["step"] += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if state["step"] % eval_every == 0 or state["step"] == steps:
            record_evaluation(model, state, loss, weight, dev, ctx)
            if world.main:
                save_checkpoint(folder, model, opt, sched, state)
                if on_checkpoint is not None:
                    on_checkpoint()
            world.barrier()
    bar.close()
    load_best(model, state)
    return {k: v for k, v in state.items() if k != "best_tensors"}
