"""Every setting of a training run, as a value (TrainConfig), and the paper's recipe: what the
library (the training loop) reads. The command line, config files and their validation are
xpe_fast.config's (the command side)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

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


@dataclass
class TrainConfig:
    """Every setting of a training run (a grid of methods is several runs of one config)."""

    method: str = "xpe"
    encoder_ratio: float | None = None
    methods: list[str] | None = None
    placement: str = "data-parallel"
    num_virtual_tokens: int = 20
    encoder_hidden_size: int = 256
    encoder_input_size: int | None = None
    prompt_dropout: float = 0.1
    prompt_dropout_scope: str = "batch"
    source: str = "joshi5"
    targets: str = "all-wo-joshi5"
    regime: str = "zero-shot"
    data: str | None = None
    text_column: str = "text"
    label_column: str = "label"
    groups: str | None = None
    steps: int = 150
    target_steps: int = 100
    batch_size: int = 32
    eval_batch_size: int = 64
    lr_prompt: float = 5e-3
    lr: float = 1e-2
    weight_decay: float = 0.01
    warmup: float = 0.1
    target_warmup: float = 0.05
    schedule: str = "cosine"
    optimizer: str = "adamw"
    grad_clip: float = 1.0
    eval_every: int | str = 50
    patience: int = 20
    max_length: int = 164
    precision: str = "auto"
    seeds: list[int] = field(default_factory=lambda: [0])
    backbone: str = "e5-small"
    init_adapter: str | None = None
    tokenizer: str | None = None
    data_dir: str | None = None
    output_dir: str | None = None
    backend: str | None = None
    device: str = "auto"
    threads: int | None = None
    preset: str | None = None
    resume: bool = False
    progress: bool = True

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
