"""Every change this package makes to a Hugging Face backbone, in one place: `accelerate`
makes it, `restore` undoes it. The backbone computes the same function either way.

`accelerate(backbone)`, in place:
- every nn.Linear of its encoder becomes a FrozenLinear (a class swap: same parameters,
  same state_dict keys; forward and input gradient on oneDNN, no weight gradient;
  frozen_linear.py); a bf16 copy of a weight is kept on the module under bf16 autocast;
- every nn.Dropout becomes a FastDropout (counter-based masks; fast_dropout.py);
- where it attends through SDPA, its config's attention implementation becomes
  "xpe_fast_sdpa" (key-padding mask, the same dropout; registered with transformers);
- in inference, self-attention modules keep a fused query/key/value layer
  (encoder_fast_path.fused_qkv), built on first use;
- a classifier head given along gets counter-based dropouts too.
The caches are written on first use through module_swap.remember, under the names listed
there, and nowhere else.

`restore(backbone)` swaps every class back, puts back the attention implementation (and takes
it out of transformers' registry once no live accelerated backbone uses it) and drops every
cache and flag the package left on the modules (module_swap.forget_all): afterwards the
backbone is the Hugging Face object it was (what `tests/test_acceleration.py` checks against
a fresh copy).
"""

from __future__ import annotations

import weakref

from torch import nn

from . import fast_dropout
from .frozen_linear import FrozenLinear, onednn_available
from .module_swap import forget_all, swap_classes

_ORIGINAL_ATTN = "_xpe_fast_original_attn"


def is_accelerated(backbone: nn.Module) -> bool:
    return hasattr(backbone, _ORIGINAL_ATTN)


# The live accelerated backbones that use the attention implementation registered with
# transformers (a process-wide registry): restoring the last one takes it out again.
_attention_users: weakref.WeakSet = weakref.WeakSet()


def accelerate(backbone: nn.Module, head: nn.Module | None = None) -> nn.Module:
    """Prepares `backbone` (a bare encoder with `.encoder` and `.config`) for speed, in place;
    idempotent. `head`: a classifier head whose dropouts get the counter-based masks too.
    Returns the backbone."""
    if head is not None:
        fast_dropout.prepare_dropouts(head)
    if is_accelerated(backbone):
        return backbone
    config = getattr(backbone, "config", None)
    original = getattr(config, "_attn_implementation", None)
    setattr(backbone, _ORIGINAL_ATTN, original)
    encoder = getattr(backbone, "encoder", backbone)
    if onednn_available():
        swap_classes(encoder, nn.Linear, FrozenLinear)
    fast_dropout.prepare_dropouts(backbone)
    if original == "sdpa" and fast_dropout.register_attention():
        config._attn_implementation = fast_dropout.ATTN_IMPLEMENTATION
        _attention_users.add(backbone)
    return backbone


def restore(backbone: nn.Module, head: nn.Module | None = None) -> nn.Module:
    """Undoes `accelerate` (a no-op on a backbone it never touched), the registration with
    transformers too once no accelerated backbone uses it. Returns the backbone."""
    if head is not None:
        fast_dropout.restore_dropouts(head)
    if not is_accelerated(backbone):
        return backbone
    swap_classes(backbone, FrozenLinear, nn.Linear)
    fast_dropout.restore_dropouts(backbone)
    forget_all(backbone)  # every cache and flag the package left on its modules
    config = getattr(backbone, "config", None)
    original = backbone.__dict__.pop(_ORIGINAL_ATTN)
    if config is not None and original is not None:
        config._attn_implementation = original
        _attention_users.discard(backbone)
        if not _attention_users:
            fast_dropout.unregister_attention()
    return backbone


def attends_fast(backbone: nn.Module) -> bool:
    """Whether the backbone attends through fast_dropout's implementation (the additive
    key-padding mask the inference kernels read)."""
    return (
        getattr(getattr(backbone, "config", None), "_attn_implementation", None)
        == fast_dropout.ATTN_IMPLEMENTATION
    )
