"""xpe_fast: fast cross-lingual soft-prompt tuning of frozen multilingual encoders.

Implements the Cross-Prompt Encoder (XPE), the standard soft prompt (SPT) and the Dual Soft
Prompt (DUAL) of "Cross-Prompt Encoder for Low-Performing Languages" (arXiv 2508.10352),
with fused C++ / Triton / CUDA kernels for the prompt-encoder MLP and the embedding stream.
"""

from . import _extension, ops
from ._version import __version__
from .model import PromptedEncoderForSequenceClassification, find_embedding_parts
from .prompt import CrossPromptEncoder, PromptEncoderMLP, split_virtual_tokens
from .reference import assemble_embeddings_reference, prompt_encoder_mlp_reference

__all__ = [
    "CrossPromptEncoder",
    "PromptEncoderMLP",
    "PromptedEncoderForSequenceClassification",
    "assemble_embeddings_reference",
    "find_embedding_parts",
    "ops",
    "prompt_encoder_mlp_reference",
    "split_virtual_tokens",
    "__version__",
]


def has_compiled_extension() -> bool:
    """True when the C++ kernels (xpe_fast._C) are loaded."""
    return _extension.has_cpu_kernels()
