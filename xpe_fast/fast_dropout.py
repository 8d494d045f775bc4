"""Dropout of the frozen backbone during training, fast on the CPU, the same masks on CUDA.

PEFT trains the prompt with the frozen backbone in train mode, so its hidden and attention
dropouts are part of the recipe. torch's CPU dropout draws from a stateful generator one
element at a time (bernoulli_: about a fifth of a training step here), and SDPA with dropout
falls back to its math path, which also checks every score row for -inf. This module keeps
the same dropout (keep with probability 1 - p, scale by 1 / (1 - p), a fresh mask per call
drawn from torch's default generator, so `torch.manual_seed` makes runs repeatable) but draws
the masks with the counter-based hash of the op `torch.ops.xpe_fast.dropout` (C++ kernel and
autograd), whose backward recomputes the mask from the call's seed instead of storing it.

- `dropout(x, p)`: the function, with autograd.
- `FastDropout`: an nn.Dropout that uses it (class swapped in place by `prepare_dropouts`).
- `attention_with_dropout`: softmax attention whose probability dropout uses it; registered
  with transformers as the attention implementation "xpe_fast_sdpa", which also serves
  evaluation: matmul + softmax up to SHORT_KEYS keys, torch's SDPA beyond.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from . import _extension, cpu_paths
from .module_swap import swap_classes

ATTN_IMPLEMENTATION = "xpe_fast_sdpa"


def available(x: torch.Tensor) -> bool:
    """Whether the counter-based kernel serves `x`: the C++ kernel on the CPU, the Triton
    kernel on CUDA (the same masks; else torch's generator draws them)."""
    if _extension._C is None or x.dtype not in (torch.float32, torch.float64, torch.bfloat16):
        return False
    if x.device.type == "cuda":
        from .ops._backend import cuda_dropout_available

        return cuda_dropout_available()
    return x.device.type == "cpu" and cpu_paths.use_dropout_kernel()


if _extension.has_cpu_kernels():

    @torch.library.register_fake("xpe_fast::dropout")
    def _(x, p, seed, offset=0):
        torch._check(0.0 <= p < 1.0, lambda: f"dropout: p must be in [0, 1), got {p}")
        torch._check(offset >= 0, lambda: f"dropout: offset must be >= 0, got {offset}")
        return x.new_empty(x.shape)


# Index, in the global batch, of the first sample of the batch this process computes (a
# rank's share under torchrun): masks are numbered from there, so they do not depend on how
# the global batch was split.
_first_sample = 0


@contextlib.contextmanager
def global_batch_offset(first_sample: int):
    """Dropout masks inside are numbered as if the batch started at sample `first_sample` of
    a larger batch (every dropout here takes batch-first tensors)."""
    global _first_sample
    before, _first_sample = _first_sample, int(first_sample)
    try:
        yield
    finally:
        _first_sample = before


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """F.dropout's function with a counter-based mask (the C++ kernel on the CPU, Triton's on
    CUDA; F.dropout where neither runs)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    if not training or p == 0.0:
        return x
    if p == 1.0 or not available(x):
        return F.dropout(x, p, training=True)
    seed = int(torch.empty((), dtype=torch.int64).random_())  # from the default generator
    offset = _first_sample * (x.numel() // x.shape[0]) if x.dim() and x.shape[0] else 0
    if x.device.type == "cuda":
        from .ops import triton_ops

        return triton_ops.dropout(x, p, seed, offset)
    return torch.ops.xpe_fast.dropout.default(x, p, seed, offset)


def sample_keep_mask(shape: tuple[int, ...], p: float, dtype: torch.dtype, device) -> torch.Tensor:
    """A scaled keep-mask (0 or 1 / (1 - p)) of the batch-first `shape`, drawn on the CPU (on
    every device alike) and numbered
    by global sample index like every dropout here: the counter-based hash of
    torch.ops.xpe_fast.dropout, its seed drawn from torch's default generator (one draw
    whatever the shape, so every rank's generator stays in step). Without the extension, a
    generator of that seed draws the rows up to this share's end and keeps this share's,
    which equals a one-process run's rows as well."""
    seed = int(torch.empty((), dtype=torch.int64).random_())
    ones = torch.ones(shape, dtype=torch.float32)
    if _extension._C is not None:
        offset = _first_sample * (ones.numel() // shape[0])
        mask = torch.ops.xpe_fast.dropout.default(ones, p, seed, offset)
        return mask.to(device=device, dtype=dtype)
    gen = torch.Generator().manual_seed(seed)
    rows = torch.empty((_first_sample + shape[0], *shape[1:])).bernoulli_(1.0 - p, generator=gen)
    return rows[_first_sample:].div_(1.0 - p).to(device=device, dtype=dtype)


class FastDropout(nn.Dropout):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inplace or not available(x):
            return super().forward(x)
        return dropout(x, self.p, self.training)


def attention_with_dropout(q, k, v, mask, scale: float, p: float) -> torch.Tensor:
    """softmax(q k^T * scale + mask) with dropout, times v: [B, H, Sq, hd] (HF's eager
    attention, with `dropout` for nn.functional.dropout). `mask` is additive (float) or
    boolean (True = attend), broadcastable to [B, H, Sq, Sk]."""
    # Scores and softmax in fp32 whatever the inputs (as autocast and the flash kernel do).
    scores = torch.matmul(q, k.transpose(-1, -2)).float().mul_(scale)
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill_(~mask, float("-inf"))
        else:
            scores = scores.add_(mask)
    probs = dropout(torch.softmax(scores, dim=-1), p)
    return torch.matmul(probs.to(v.dtype) if not torch.is_autocast_enabled("cpu") else probs, v)


# Up to this many keys, matmul + softmax with a key-padding mask beats torch's CPU
# flash-attention kernel in the model's evaluation (benchmarks/profile_model.py measures the
# pass both ways; standalone timings swing with the allocator's state).
SHORT_KEYS = 80


def _hf_attention(
    module,
    query,
    key,
    value,
    attention_mask,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if kwargs.get("is_causal") or getattr(module, "is_causal", False) or not available(query):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    out = attend(query, key, value, attention_mask, scaling, dropout)
    return out.transpose(1, 2).contiguous(), None


def attend(q, k, v, mask, scale: float, p: float, short_keys: int = SHORT_KEYS) -> torch.Tensor:
    """Attention [B, H, Sq, hd] on the CPU: matmul + softmax with dropout `p` (training) or
    up to `short_keys` keys; torch's SDPA (flash kernel) for longer keys without dropout."""
    if isinstance(mask, torch.Tensor) and mask.is_floating_point():
        mask = mask.to(q.dtype)
    if p == 0.0 and k.shape[-2] > short_keys:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return attention_with_dropout(q, k, v, mask, scale, p)


def register_attention() -> bool:
    """Registers "xpe_fast_sdpa" with transformers (attention and mask); False if this
    transformers has no such registries."""
    try:
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
        from transformers.modeling_utils import AttentionInterface
    except ImportError:
        return False
    AttentionInterface.register(ATTN_IMPLEMENTATION, _hf_attention)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, sdpa_mask)
    return True


def unregister_attention() -> None:
    """Takes "xpe_fast_sdpa" out of transformers' registries again (acceleration.restore,
    when no accelerated backbone uses it any more)."""
    try:
        from transformers.masking_utils import AttentionMaskInterface
        from transformers.modeling_utils import AttentionInterface
    except ImportError:
        return
    for registry in (AttentionInterface, AttentionMaskInterface):
        getattr(registry, "_global_mapping", {}).pop(ATTN_IMPLEMENTATION, None)


def prepare_dropouts(module: nn.Module) -> int:
    """Makes every nn.Dropout of `module` a FastDropout in place; returns how many."""
    return swap_classes(module, nn.Dropout, FastDropout) if _extension._C is not None else 0


def restore_dropouts(module: nn.Module) -> None:
    swap_classes(module, FastDropout, nn.Dropout)
