"""The fused operations of xpe_fast, as a public functional API.

- prompt_encoder_mlp: the XPE prompt-encoder MLP, forward and backward in one call each.
- assemble_embeddings: prompt rows + token embeddings + positions + token type + LayerNorm.
- dropout: keep-and-scale with a counter-based hash (the same masks on every device and
  for every split of a batch over processes).

Inference-only helpers of the encoder (C++ CPU kernel or the eager reference):
- packed_attention: self-attention read from the packed QKV projection.
- residual_layer_norm: LayerNorm(x + residual), with an optional bf16 copy.

Each is a dispatcher op, torch.ops.xpe_fast.<name> (schemas in csrc/schema.cpp, autograd in
csrc/autograd.cpp). The two fused ops run on a backend: "reference" (eager PyTorch), "cpu"
(C++ kernels), "triton" (GPU, or the CPU under TRITON_INTERPRET=1; registered as the device's
kernel of the same ops) or "cuda" (when xpe_fast._cuda is built); None picks the device's
best. The inference helpers run on "cpu" or "reference" (and take the kernel by default only
where xpe_fast/cpu_paths.py finds it faster at this ISA level).
"""

from ._backend import BACKENDS, available_backends, resolve_backend
from .assemble_embeddings import assemble_embeddings
from .dropout import dropout
from .packed_attention import packed_attention
from .prompt_encoder_mlp import prompt_encoder_mlp
from .residual_layer_norm import residual_layer_norm

__all__ = [
    "BACKENDS",
    "available_backends",
    "resolve_backend",
    "assemble_embeddings",
    "dropout",
    "prompt_encoder_mlp",
    "packed_attention",
    "residual_layer_norm",
]
