"""The fused operations of xpe_fast, as a public functional API.

- prompt_encoder_mlp: the XPE prompt-encoder MLP, forward and backward in one call each.
- assemble_embeddings: prompt rows + token embeddings + positions + token type + LayerNorm.

Each runs on a backend: "reference" (eager PyTorch), "cpu" (C++ kernels), "triton" or "cuda".
"""
from ._backend import BACKENDS, available_backends, resolve_backend
from .assemble_embeddings import assemble_embeddings
from .prompt_encoder_mlp import prompt_encoder_mlp

__all__ = ["BACKENDS", "available_backends", "resolve_backend", "assemble_embeddings",
           "prompt_encoder_mlp"]
