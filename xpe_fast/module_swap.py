"""In-place changes of a module tree, in one place: class swaps of its layers (same
parameters, buffers and state_dict keys; isinstance of the original class still holds for
subclasses), and the per-instance state the package keeps on its modules (caches, flags),
each under a name written only here, so that acceleration.restore can drop every one."""

from __future__ import annotations

from torch import nn

BF16_WEIGHTS = "_xpe_fast_bf16_weights"  # FrozenLinear: (key, bf16 weight, bf16 bias)
LINEAR_FAST = "_xpe_fast_linear_fast"  # FrozenLinear: False runs nn.Linear's forward
FUSED_QKV = "_xpe_fast_qkv"  # a self-attention module: (key, one Linear for q, k, v)
INSTANCE_STATE = (BF16_WEIGHTS, LINEAR_FAST, FUSED_QKV)


def swap_classes(module: nn.Module, old: type, new: type) -> int:
    """Makes every submodule whose class is exactly `old` an instance of `new`; returns how
    many."""
    n = 0
    for m in module.modules():
        if type(m) is old:
            m.__class__ = new
            n += 1
    return n


def remember(module: nn.Module, name: str, value) -> None:
    """Keeps `value` on the module instance under one of INSTANCE_STATE's names (outside its
    parameters, buffers and submodules: state_dict is unchanged)."""
    if name not in INSTANCE_STATE:
        raise KeyError(f"{name!r} is not one of the package's instance state names")
    module.__dict__[name] = value


def recall(module: nn.Module, name: str, default=None):
    return module.__dict__.get(name, default)


def forget_all(root: nn.Module) -> None:
    """Drops every piece of instance state the package left on `root`'s modules."""
    for m in root.modules():
        for name in INSTANCE_STATE:
            m.__dict__.pop(name, None)
