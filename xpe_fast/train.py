"""Train SPT / XPE / DUAL prompts on SIB-200 with a frozen encoder and evaluate them on every
target language, by language group.

    python -m xpe_fast.train                      # XPE on Joshi5, short schedule, zero-shot
    python -m xpe_fast.train --method dual --encoder-ratio 0.3 --source enarzho --seeds 0,1,2
    python -m xpe_fast.train --methods spt,xpe,dual-0.3,dual-0.7 --seeds 0,1,2   # a grid
    python -m xpe_fast.train --preset paper       # the paper's full recipe (24,000 steps)
    python -m xpe_fast.train --output-dir runs/x --resume   # continue an interrupted run

Every flag can also come from --config FILE (.json or .toml, the same keys with "_" or "-").
Every setting, data file and the backbone's config are checked before any heavy work; nothing
is written until the backbone has loaded.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from . import data as D
from . import distributed, run_lock
from .adapter import load_adapter, save_adapter, trainable_state
from .atomic import atomic_write_json
from .cli_common import note_length_cap, run_cli
from .config import TrainConfig, build_parser, resolve_config
from .device import check_backend, resolve_device, resolve_precision
from .distributed import World
from .errors import UserError
from .evaluation import evaluate_encoded, evaluate_languages
from .interop import fetch_adapter
from .languages import resolve_languages
from .loop import set_seed, train_phase
from .report import (
    format_grid_table,
    format_group_table,
    summarize,
    summarize_grid,
    write_accuracy_csv,
)

log = logging.getLogger("xpe_fast.train")

MARKER = "run_config.json"


class RunClock:
    """Wall time of a run summed over every invocation that worked on it (a resumed run
    continues the count), kept in `<out>/wall_time.json`."""

    def __init__(self, out: Path):
        self.path = out / "wall_time.json"
        self.t0 = time.time()
        self.before = 0.0
        if self.path.is_file():
            try:
                self.before = float(json.loads(self.path.read_text())["seconds"])
            except (ValueError, KeyError, TypeError):
                self.before = 0.0

    def now(self) -> float:
        return time.time() - self.t0

    def total(self) -> float:
        return self.before + self.now()

    def tick(self) -> None:
        atomic_write_json(self.path, {"seconds": self.total()})

    def figures(self) -> dict:
        return {"wall_seconds": self.now(), "wall_seconds_total": self.total()}


# ---- the output folder -----------------------------------------------------------------


def check_output_dir(cfg: TrainConfig, locked: bool = False) -> Path:
    """The output folder must be new (or empty), or hold this same run to resume, and no
    other run may be writing it; checked before any work, created only later
    (create_output_dir). `locked`: this process holds the folder's lock (run_lock.hold)."""
    out = Path(cfg.output_dir)
    marker = out / MARKER
    if out.exists() and not out.is_dir():
        raise UserError(f"--output-dir: {out} exists and is not a folder")
    if out.is_dir() and not locked:
        run_lock.check_free(out)
    if out.is_dir() and any(p.name != run_lock.LOCK_NAME for p in out.iterdir()):
        if not marker.is_file():
            raise UserError(
                f"--output-dir: {out} is not empty and holds no xpe_fast run; "
                "choose another --output-dir"
            )
        try:
            saved = TrainConfig(**json.loads(marker.read_text())).stable()
        except (ValueError, TypeError) as e:
            raise UserError(f"--output-dir: {marker} cannot be read ({e})") from None
        if not cfg.resume:
            raise UserError(
                f"--output-dir: {out} already holds a run; pass --resume to "
                "continue it, or choose another --output-dir"
            )
        stable = cfg.stable()
        if saved != stable:
            diff = sorted(k for k in set(stable) | set(saved) if stable.get(k) != saved.get(k))
            raise UserError(
                f"--output-dir: {out} holds another run (settings differ: "
                f"{', '.join(diff)}); choose another --output-dir"
            )
    elif cfg.resume:
        raise UserError(f"--resume: {out} holds no run to resume")
    return out


def create_output_dir(cfg: TrainConfig, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if not (out / MARKER).is_file():
        atomic_write_json(out / MARKER, cfg.to_dict())


def check_data(dataset: D.SIB200, sources: list[str], targets: list[str], cfg: TrainConfig) -> None:
    """Parses every split the run will read (a bad row fails now, naming file and line)."""
    need = [(l, s) for l in sources for s in ("train", "dev")] + [(l, "test") for l in targets]
    if cfg.regime == "supervised":
        need += [(l, s) for l in targets for s in ("train", "dev")]
    if dataset.hub:
        return  # read (and checked) as the run reaches each language
    for lang, split in need:
        dataset.split(lang, split)


# ---- one run ---------------------------------------------------------------------------


def build_model(cfg: TrainConfig, bb, device: torch.device, num_labels: int, init=None):
    """The run's model; with `init` (an --init-adapter as read), the prompt has that
    adapter's split and table widths, read from its tensors."""
    from .adapter import prompt_shape_kwargs
    from .model import PromptedEncoderForSequenceClassification

    shape = {
        "num_virtual_tokens": cfg.num_virtual_tokens,
        "encoder_ratio": cfg.encoder_ratio,
        "encoder_hidden_size": cfg.encoder_hidden_size,
        "encoder_input_size": cfg.encoder_input_size,
    }
    if init is not None:
        shape = prompt_shape_kwargs({**init[0], "encoder_ratio": cfg.encoder_ratio})
    return PromptedEncoderForSequenceClassification(
        bb.model,
        num_labels,
        prompt_dropout=cfg.prompt_dropout,
        prompt_dropout_scope=cfg.prompt_dropout_scope,
        backend=cfg.backend,
        accelerate=cfg.backend != "reference",  # the command opts in; the reference route not
        **shape,
    ).to(device)


@dataclass
class Run:
    """What every step of one run (method, seed) reads: its settings, the backbone, the data
    and the languages, where it computes, and the run clock's tick."""

    cfg: TrainConfig
    bb: object
    dataset: object
    sources: list
    targets: list
    device: torch.device
    world: World
    tick: object = None
    init: tuple | None = None


def run_seed(seed: int, run: Run, out: Path) -> dict:
    """One run (method, seed): train on the sources, save the adapter, evaluate zero-shot
    (and supervised). Every rank of `run.world` computes; its rank 0 alone writes.
    `run.tick()` (the run clock's) after each checkpoint and at the end."""
    cfg, world = run.cfg, run.world
    folder = out / f"seed-{seed}"
    done = folder / "results.json"
    if done.is_file():
        log.info("%s seed %d already finished; reusing %s", cfg.tag, seed, done)
        return json.loads(done.read_text())
    if world.main:
        folder.mkdir(parents=True, exist_ok=True)
    model = seeded_model(run, seed, folder)
    max_len = min(cfg.max_length, model.max_input_length)
    phase = train_on_sources(run, seed, folder, model, max_len)
    result = evaluate_zero_shot(run, seed, folder, model, max_len, phase)
    if cfg.regime == "supervised":
        result["supervised"] = run_supervised(run, seed, folder, model, max_len)
    if world.main:
        atomic_write_json(done, result)
        if run.tick is not None:
            run.tick()
    world.barrier()
    return result


def seeded_model(run: Run, seed: int, folder: Path):
    """The run's model after set_seed(seed), from the --init-adapter if one is given (and no
    checkpoint supersedes it)."""
    cfg = run.cfg
    set_seed(seed)
    model = build_model(cfg, run.bb, run.device, len(run.dataset.labels), run.init)
    if cfg.init_adapter and not (folder / "checkpoint.safetensors").is_file():
        load_adapter(cfg.init_adapter, model, run.bb.name, run.init)
        log.info("%s seed %d: starting from the adapter in %s", cfg.tag, seed, cfg.init_adapter)
    return model


def train_on_sources(run: Run, seed: int, folder: Path, model, max_len: int) -> dict:
    """The source phase (or, resumed after it, the saved adapter loaded); its state."""
    cfg, bb, dataset = run.cfg, run.bb, run.dataset
    encode = lambda split: D.concat(  # noqa: E731
        [D.encode(bb.tokenizer, dataset.split(l, split), max_len, l) for l in run.sources]
    )
    train, dev = encode("train"), encode("dev")
    log.info(
        "%s seed %d: %d trainable parameters; %d source training examples (%d truncated "
        "to %d tokens), %d dev examples",
        cfg.tag, seed, model.num_trainable_parameters(), len(train.ids), train.n_truncated,
        max_len, len(dev.ids),
    )  # fmt: skip
    adapter_dir, source_done = folder / "adapter", folder / "source_done.json"
    if source_done.is_file():
        log.info("%s seed %d: resumed after training; evaluating the saved adapter", cfg.tag, seed)
        load_adapter(adapter_dir, model, bb.name)
        phase = json.loads(source_done.read_text())
    else:
        phase = train_phase(
            model, train, dev, cfg, steps=cfg.steps, warmup=cfg.warmup, seed=seed,
            pad_id=bb.pad_token_id, folder=folder, desc=f"{cfg.tag} seed {seed} train",
            device=run.device, precision=cfg.precision, on_checkpoint=run.tick, world=run.world,
        )  # fmt: skip
        if run.world.main:
            extra = {"seed": seed, "source": run.sources, "best_step": phase["best_step"],
                     "dev_accuracy": phase["best_acc"]}  # fmt: skip
            save_adapter(model, adapter_dir, bb.name, list(dataset.labels), extra=extra)
            atomic_write_json(source_done, phase)
        run.world.barrier()
    log.info(
        "%s seed %d: best source dev accuracy %.4f at step %d (%.0f s training)",
        cfg.tag, seed, phase["best_acc"], phase["best_step"], phase.get("train_seconds", 0.0),
    )  # fmt: skip
    return phase


def evaluate_zero_shot(run: Run, seed: int, folder: Path, model, max_len: int, phase) -> dict:
    """The zero-shot evaluation on every target; the run's result record."""
    cfg, bb = run.cfg, run.bb
    t1 = time.time()
    zs = evaluate_languages(
        model, bb.tokenizer, run.dataset, run.targets, "test", max_len, cfg.eval_batch_size,
        bb.pad_token_id, cfg.precision, run.device, progress=cfg.progress, world=run.world,
    )  # fmt: skip
    eval_seconds = time.time() - t1
    if run.world.main:
        write_accuracy_csv(folder / "zero_shot_accuracy.csv", zs, space=run.dataset.space)
    return {
        "seed": seed,
        "method": cfg.tag,
        "source_dev_accuracy": phase["best_acc"],
        "best_step": phase["best_step"],
        "steps_run": phase["step"],
        "history": phase.get("history", []),
        "train_seconds": phase.get("train_seconds"),
        "eval_seconds": eval_seconds,
        "zero_shot": {k: v["accuracy"] for k, v in zs.items()},
        "truncated_test_inputs": sum(v["truncated"] for v in zs.values()),
    }


def run_supervised(run: Run, seed: int, folder: Path, model, max_len: int) -> dict:
    """From the source-trained prompt, a short run on each target's own train split."""
    cfg, bb, dataset, device, world = run.cfg, run.bb, run.dataset, run.device, run.world
    sup = {}
    base = {k: v.clone() for k, v in trainable_state(model).items()}
    own = dict(model.named_parameters())
    model.prompt.set_dropout(0.0)
    for lang in run.targets:
        lang_dir = folder / "supervised" / lang
        res_file = lang_dir / "result.json"
        if res_file.is_file():
            sup[lang] = json.loads(res_file.read_text())
            continue
        with torch.no_grad():
            for k, v in base.items():
                own[k].copy_(v)
        if world.main:
            lang_dir.mkdir(parents=True, exist_ok=True)
        world.barrier()
        tr = D.encode(bb.tokenizer, dataset.split(lang, "train"), max_len, lang)
        dv = D.encode(bb.tokenizer, dataset.split(lang, "dev"), max_len, lang)
        train_phase(
            model,
            tr,
            dv,
            cfg,
            steps=cfg.target_steps,
            warmup=cfg.target_warmup,
            seed=seed,
            pad_id=bb.pad_token_id,
            folder=lang_dir,
            desc=f"{cfg.tag} seed {seed} {lang}",
            device=device,
            precision=cfg.precision,
            on_checkpoint=run.tick,
            world=world,
        )
        te = D.encode(bb.tokenizer, dataset.split(lang, "test"), max_len, lang)
        acc, loss, _ = evaluate_encoded(
            model, te, cfg.eval_batch_size, bb.pad_token_id, cfg.precision, device, world=world
        )
        sup[lang] = {"accuracy": acc, "n": len(te.ids), "truncated": te.n_truncated, "loss": loss}
        if world.main:
            atomic_write_json(res_file, sup[lang])
    if world.main:
        write_accuracy_csv(folder / "supervised_accuracy.csv", sup, space=dataset.space)
    model.prompt.set_dropout(cfg.prompt_dropout)
    return {k: v["accuracy"] for k, v in sup.items()}


# ---- the command -----------------------------------------------------------------------


class _LogFile(logging.FileHandler):
    """train.log, whose write failures (a full disk) end the command with the OS error in
    one line instead of logging's traceback per record."""

    def handleError(self, record):
        err = sys.exc_info()[1]
        if isinstance(err, OSError):
            raise err
        super().handleError(record)


def setup_logging(out: Path, world: World) -> None:
    """Rank 0 logs the package's messages (xpe_fast.*) to the terminal and to train.log;
    other ranks only warnings."""
    pkg = logging.getLogger("xpe_fast")
    pkg.setLevel(logging.INFO if world.main else logging.WARNING)
    for h in list(pkg.handlers):
        pkg.removeHandler(h)
    pkg.propagate = False
    if not world.main:
        sh = logging.StreamHandler(sys.stderr)
        sh.setFormatter(logging.Formatter(f"rank {world.rank}: %(message)s"))
        pkg.addHandler(sh)
        return
    fh = _LogFile(out / "train.log", encoding="utf-8")
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    sh = logging.StreamHandler(sys.stderr)
    sh.setFormatter(logging.Formatter("%(message)s"))
    pkg.addHandler(fh)
    pkg.addHandler(sh)


def prepare(cfg: TrainConfig, device: torch.device):
    """Every check that needs no weights: backend, precision, languages, data, the backbone's
    config, the prompt against its position table, the output folder."""
    from . import backbones

    check_backend(cfg.backend, device)
    cfg.precision = resolve_precision(cfg.precision, device)
    dataset = D.open_dataset(cfg.data, cfg.data_dir, cfg.text_column, cfg.label_column, cfg.groups)
    sources = resolve_languages(cfg.source, dataset.space)
    targets = resolve_languages(cfg.targets, dataset.space)
    if dataset.own:
        dataset.fix_labels(sources)
    check_data(dataset, sources, targets, cfg)
    info = backbones.inspect(cfg.backbone, cfg.tokenizer)
    room = info.max_position_embeddings - info.position_offset - 3
    if cfg.num_virtual_tokens > room:
        raise UserError(
            f"--num-virtual-tokens {cfg.num_virtual_tokens} does not fit the "
            f"backbone's {info.max_position_embeddings} positions: at most {room} "
            "leave room for <s>, one token and </s>"
        )
    cap = info.max_position_embeddings - info.position_offset - cfg.num_virtual_tokens
    if cfg.max_length > cap and int(os.environ.get("RANK", 0)) == 0:
        note_length_cap(cfg.max_length, cap, info.max_position_embeddings, cfg.num_virtual_tokens)
    init = check_init_adapter(cfg, dataset) if cfg.init_adapter else None
    out = check_output_dir(cfg)
    return sources, targets, dataset, out, init


def check_init_adapter(cfg: TrainConfig, dataset) -> tuple[dict, dict]:
    """The --init-adapter, read and checked against the run's prompt (method, sizes)."""
    from .interop import read_any_adapter

    adapter = read_any_adapter(fetch_adapter(cfg.init_adapter, "--init-adapter"))
    a = adapter[0]
    want = {
        "encoder_ratio": float(cfg.encoder_ratio),
        "num_virtual_tokens": cfg.num_virtual_tokens,
        "num_labels": len(dataset.labels),
    }
    if float(cfg.encoder_ratio) > 0:
        want["encoder_hidden_size"] = cfg.encoder_hidden_size
        if cfg.encoder_input_size is not None:
            want["encoder_input_size"] = cfg.encoder_input_size
    diff = {
        k: (a.get(k), v)
        for k, v in want.items()
        if (float(a.get(k)) if k == "encoder_ratio" else a.get(k)) != v
    }
    if diff:
        raise UserError(
            f"--init-adapter {cfg.init_adapter} does not fit this run (adapter vs "
            f"run: {diff}); set --method/--encoder-ratio/--num-virtual-tokens/"
            "--encoder-hidden-size/--encoder-input-size to the adapter's"
        )
    return adapter


def run(args) -> int:
    cfg = resolve_config(args)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    if distributed.launched_by_torchrun():
        if cfg.output_dir is None:
            raise UserError(
                "--output-dir is required under torchrun (every rank, and a "
                "restarted worker group, must find the same run)"
            )
        device = distributed.rank_device(device)
        if distributed.restarted_by_torchrun() and (Path(cfg.output_dir) / MARKER).is_file():
            cfg.resume = True  # a restarted worker group continues its own run
    world = distributed.init(device)
    try:
        sources, targets, dataset, out, init = prepare(cfg, device)
        world.barrier()  # every rank checked the output folder before rank 0 creates it
        bb, tags = load_checked_models(cfg, device, dataset, sources, init)
        # One writer per run folder: rank 0 holds its lock for the whole run.
        with run_lock.hold(out) if world.main else contextlib.nullcontext():
            if world.main:
                check_output_dir(cfg, locked=True)  # as it is now, under the lock
                create_output_dir(cfg, out)
            world.barrier()
            return train_and_report(
                cfg, device, world, bb, tags, sources, targets, dataset, out, init
            )
    finally:
        distributed.shutdown()


def load_checked_models(cfg: TrainConfig, device, dataset, sources, init=None):
    """(the backbone, the run's method tags), every method's model built once: an
    unsupported encoder (or method), or a tokenizer that does not fit the backbone and the
    source sentences, is refused before anything is written."""
    from . import backbones

    bb = backbones.load(cfg.backbone, cfg.tokenizer)
    texts = [e.text for l in sources for e in dataset.split(l, "train")]
    backbones.check_tokenizer_fits(bb, backbones.sample_texts(texts), "the source sentences")
    tags = cfg.methods or [cfg.tag]
    for tag in tags:
        build_model(cfg.for_method(tag), bb, device, len(dataset.labels), init)
    return bb, tags


def train_and_report(
    cfg: TrainConfig, device, world: World, bb, tags, sources, targets, dataset, out: Path, init
) -> int:
    """Every run of the command (each method and seed), then the summaries and the tables."""
    setup_logging(out, world)
    clock = RunClock(out)
    log.info(
        "xpe_fast.train: %s, N=%d, source %s (%d languages), %d targets, %s, %d steps, "
        "precision %s, device %s, %d process(es) x %d threads; output %s",
        ",".join(tags), cfg.num_virtual_tokens, cfg.source, len(sources), len(targets),
        cfg.regime, cfg.steps, cfg.precision, device, world.size, torch.get_num_threads(), out,
    )  # fmt: skip
    run = Run(cfg, bb, dataset, sources, targets, device, world, clock.tick, init)
    results = run_all(run, tags, out)
    if not world.main:
        return 0
    clock.tick()
    grid = cfg.methods is not None
    summaries = {
        t: summarize(
            results[t],
            cfg.for_method(t).to_dict(),
            out / t if grid else out,
            clock.figures(),
            dataset.space,
        )  # fmt: skip
        for t in tags
    }
    if grid:
        summarize_grid(summaries, cfg.to_dict(), out, clock.figures())
    print_report(cfg, tags, summaries, clock, out)
    return 0


def run_all(run: Run, tags: list[str], out: Path) -> dict[str, list[dict]]:
    """Each (seed, method)'s result, seed-major (a partial grid holds every method equally
    often). With --placement process, whole runs on separate processes (small backbones,
    where a global batch split K ways wastes each process): run i on rank i mod K, each in
    one process as alone; rank 0 then reads every result."""
    cfg, world = run.cfg, run.world
    grid = cfg.methods is not None
    runs = [(seed, tag) for seed in cfg.seeds for tag in tags]
    folder = lambda tag: out / tag if grid else out  # noqa: E731
    results: dict[str, list[dict]] = {t: [] for t in tags}
    if cfg.placement == "process" and world.enabled:
        tick = run.tick if world.main else None
        for i, (seed, tag) in enumerate(runs):
            if i % world.size == world.rank:
                alone = replace(run, cfg=cfg.for_method(tag), world=World(), tick=tick)
                run_seed(seed, alone, folder(tag))
        world.barrier()
        if world.main:
            for seed, tag in runs:
                done = folder(tag) / f"seed-{seed}" / "results.json"
                results[tag].append(json.loads(done.read_text()))
        return results
    for seed, tag in runs:
        results[tag].append(run_seed(seed, replace(run, cfg=cfg.for_method(tag)), folder(tag)))
    return results


def print_report(cfg: TrainConfig, tags, summaries: dict, clock: RunClock, out: Path) -> None:
    grid = cfg.methods is not None
    print()
    if grid:
        for reg in summaries[tags[0]]["groups"]:
            title = f"source {cfg.source}, {reg.replace('_', '-')}:"
            print(format_grid_table(summaries, reg, title))
    else:
        for reg, rows in summaries[tags[0]]["groups"].items():
            title = (
                f"{cfg.method.upper()} from {cfg.source}, {reg.replace('_', '-')}, "
                f"{len(cfg.seeds)} seed(s):"
            )
            print(format_group_table(rows, title))
    for tag in tags:
        print(
            f"source dev accuracy{' (' + tag + ')' if grid else ''}: "
            + ", ".join(f"{100 * a:.1f}" for a in summaries[tag]["source_dev_accuracy"])
        )
    print(
        f"wall time {clock.now() / 60:.1f} min ({clock.total() / 60:.1f} min over every "
        f"session of this run); results in {out}/ (summary.json, accuracy.csv, accuracy.png, "
        "train.log, " + ("<method>/" if grid else "") + "seed-*/adapter)"
    )


def main(argv=None) -> int:
    return run_cli(run, build_parser(__doc__), argv)


if __name__ == "__main__":
    sys.exit(main())
