"""Every setting of a training run, as a value (TrainConfig), and the paper's recipe: what the
library (the training loop) reads. The command line, config files and their validation are
xpe_fast.config's (the command side)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

from .data import HUB_DATASET
from .errors import UserError

# Keys that may change between an interrupted run and its resumption.
VOLATILE = {
    "resume",
    "threads",
    "progress",
    "output_dir",
    "backend",
    "config",
    "device",
    "placement",
}

# The paper's reference code's recipe after its runtime overrides (batch 32, 24,000 steps,
# Adafactor at 5e-5 with the prompt tables at 5e-3, cosine with 2 restarts, bf16, 10 seeds).
PAPER_PRESET = dict(
    steps=24000,
    target_steps=6000,
    optimizer="adafactor",
    lr=5e-5,
    lr_prompt=5e-3,
    weight_decay=0.01,
    warmup=0.1,
    target_warmup=0.05,
    schedule="cosine-restarts",
    eval_every="epoch",
    patience=20,
    precision="bf16",
    seeds="0,1,2,3,4,5,6,7,8,9",
    batch_size=32,
    max_length=164,
    prompt_dropout_scope="sample",
)

METHOD_RATIOS = {"spt": 0.0, "xpe": 1.0, "dual": 0.7}


def setting(default, group: str, help: str, *, kind=None, choices=None, shown=None, **flag):
    """A TrainConfig field with what the command line shows of it, written once: its group
    of flags, help, kind ("int", "float", "bool"), allowed values and how its default reads
    in the help (`shown`; by default the value itself). `flag`: argparse extras (metavar,
    action, dest flag name)."""
    meta = {"group": group, "help": help, "kind": kind, "choices": choices, "shown": shown}
    meta["flag"] = flag
    if callable(default):
        return field(default_factory=default, metadata=meta)
    return field(default=default, metadata=meta)


DEVICES = "auto (CUDA where available), cpu, cuda or cuda:N"


@dataclass
class TrainConfig:
    """Every setting of a training run (a grid of methods is several runs of one config).
    Each field's metadata is what `xpe_fast.config` builds the command line from."""

    method: str = setting(
        "xpe", "method", "spt (r=0), xpe (r=1) or dual (0<r<1)", choices=("spt", "xpe", "dual")
    )
    encoder_ratio: float | None = setting(
        None, "method", "share of XPE tokens", kind="float",
        shown="0 / 1 / 0.7 for spt / xpe / dual",
    )  # fmt: skip
    methods: list[str] | None = setting(
        None, "method", "a grid: comma-separated methods, e.g. spt,xpe,dual-0.3,dual-0.7, each "
        "run for every seed into one output folder",
    )  # fmt: skip
    placement: str = setting(
        "data-parallel", "method", "under torchrun: each run data-parallel over all processes, "
        "or whole runs (method, seed) on separate processes",
        choices=("data-parallel", "process"),
    )  # fmt: skip
    num_virtual_tokens: int = setting(20, "method", "N", kind="int")
    encoder_hidden_size: int = setting(256, "method", "MLP width h", kind="int")
    encoder_input_size: int | None = setting(
        None, "method", "width d_in of the XPE input table", kind="int",
        shown="the backbone's hidden size",
    )  # fmt: skip
    prompt_dropout: float = setting(0.1, "method", "MLP dropout on sources", kind="float")
    prompt_dropout_scope: str = setting(
        "batch", "method", "batch: one set of MLP dropout masks per step (the prompt computed "
        "once); sample: each sample its own masks, as the paper's code (--preset paper)",
        choices=("batch", "sample"),
    )  # fmt: skip
    source: str = setting(
        "joshi5", "data",
        "source group or codes: joshi5, enarzho, seen-92, or a comma-separated list",
    )  # fmt: skip
    targets: str = setting("all-wo-joshi5", "data", "target languages or groups")
    regime: str = setting(
        "zero-shot", "data", "supervised also trains on each target's own train split",
        choices=("zero-shot", "supervised"),
    )  # fmt: skip
    data: str | None = setting(
        None, "data", "your own data instead of SIB-200: a folder <language>/<split>."
        "{csv,tsv,jsonl} (train, dev, test) or a Hugging Face dataset id with one "
        "configuration per language", metavar="DIR_OR_HUB_ID",
    )  # fmt: skip
    text_column: str = setting("text", "data", "text field of --data")
    label_column: str = setting(
        "label", "data",
        "label field of --data; the label set is read from the sources' train splits",
    )  # fmt: skip
    groups: str | None = setting(
        None, "data", "language groups for --source/--targets and the reports: a CSV with "
        "columns code,group", metavar="CSV",
    )  # fmt: skip
    steps: int = setting(150, "optimization", "training steps on the sources", kind="int")
    target_steps: int = setting(
        100, "optimization", "steps per target language in the supervised regime", kind="int"
    )
    batch_size: int = setting(
        32, "optimization", "global batch (split over processes under torchrun)", kind="int"
    )
    eval_batch_size: int = setting(64, "optimization", "evaluation batch", kind="int")
    lr_prompt: float = setting(5e-3, "optimization", "lr of the prompt tables", kind="float")
    lr: float = setting(1e-2, "optimization", "lr of the MLP and head", kind="float")
    weight_decay: float = setting(
        0.01, "optimization", "weight decay of the MLP and head (prompt tables: 0)", kind="float"
    )
    warmup: float = setting(0.1, "optimization", "warm-up share of the steps", kind="float")
    target_warmup: float = setting(
        0.05, "optimization", "warm-up share of each target's steps (supervised)", kind="float"
    )
    schedule: str = setting(
        "cosine", "optimization", "learning-rate schedule",
        choices=("cosine", "cosine-restarts", "linear", "constant"),
    )  # fmt: skip
    optimizer: str = setting("adamw", "optimization", "optimizer", choices=("adamw", "adafactor"))
    grad_clip: float = setting(1.0, "optimization", "0 turns clipping off", kind="float")
    eval_every: int | str = setting(
        50, "optimization", "evaluate on the source dev sets every K steps, or 'epoch'"
    )
    patience: int = setting(
        20, "optimization",
        "early stopping: evaluations without a lower dev loss, counted after half the steps",
        kind="int",
    )  # fmt: skip
    max_length: int = setting(164, "data", "tokens per input", kind="int")
    precision: str = setting(
        "auto", "optimization", "auto = bf16 autocast where the CPU has AMX / AVX-512 bf16 (or "
        "on CUDA with bf16), else fp32", choices=("auto", "fp32", "bf16"),
    )  # fmt: skip
    seeds: list[int] = setting(
        lambda: [0], "optimization", "comma-separated seeds, one run each", shown="0"
    )
    backbone: str = setting(
        "e5-small", "run", "e5-small (embedded), a hub id or a local model folder"
    )
    init_adapter: str | None = setting(
        None, "run", "start from this adapter (xpe_fast's, a PEFT prompt adapter, or the "
        "paper's layout with its MLP) instead of random tables", metavar="DIR",
    )  # fmt: skip
    tokenizer: str | None = setting(None, "run", "a tokenizer.json to use instead")
    data_dir: str | None = setting(
        None, "data", f"SIB-200 folder, or the hub id {HUB_DATASET}",
        shown="$XPE_FAST_DATA_DIR, ./shared/sib200, ../shared/sib200",
    )  # fmt: skip
    output_dir: str | None = setting(
        None, "run", "the run's folder", shown="runs/<method>-<source>-<time>"
    )
    backend: str | None = setting(
        None, "run", "backend of the fused ops", shown="the device's best",
        choices=(None, "reference", "cpu", "triton", "cuda"),
    )  # fmt: skip
    device: str = setting("auto", "run", DEVICES)
    threads: int | None = setting(None, "run", "torch threads", kind="int", shown="torch's default")
    preset: str | None = setting(
        None, "run", "paper: the paper's recipe (24,000 steps, Adafactor, 10 seeds)",
        choices=(None, "paper"),
    )  # fmt: skip
    resume: bool = setting(
        False, "run", "continue the run in --output-dir", kind="bool", action="store_true"
    )
    progress: bool = setting(
        True, "run", "no progress bars", kind="bool", action="store_false", name="--no-progress"
    )

    def to_dict(self) -> dict:
        return asdict(self)

    def stable(self) -> dict:
        """What identifies the run (what a resumption must not change)."""
        return {k: v for k, v in self.to_dict().items() if k not in VOLATILE}

    @property
    def tag(self) -> str:
        """The method's name in a grid: spt, xpe, dual-0.3, ..."""
        return method_tag(self.method, self.encoder_ratio)

    def for_method(self, tag: str) -> TrainConfig:
        method, ratio = parse_method(tag)
        return replace(self, method=method, encoder_ratio=ratio, methods=None)


def method_tag(method: str, ratio: float | None) -> str:
    if method == "dual":
        return f"dual-{ratio:g}"
    return method


def parse_method(tag: str) -> tuple[str, float]:
    """'spt', 'xpe', 'dual' (r = 0.7), 'dual-0.3' or 'dual-30' -> (method, encoder ratio)."""
    t = tag.strip().lower()
    if t in METHOD_RATIOS:
        return t, METHOD_RATIOS[t]
    if t.startswith("dual-"):
        try:
            r = float(t[5:])
        except ValueError:
            r = float("nan")
        if r > 1:
            r /= 100  # dual-30 as the paper writes it
        if math.isfinite(r) and 0 < r < 1:
            return "dual", r
    raise UserError(
        f"--methods: {tag!r} is not a method (spt, xpe, dual, dual-R with 0 < R < 1 "
        "or a percentage, e.g. dual-0.3 or dual-30)"
    )
