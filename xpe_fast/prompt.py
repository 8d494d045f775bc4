"""The prompt module: standard soft prompt (SPT), Cross-Prompt Encoder (XPE) and DUAL.

One module covers the three methods of arXiv 2508.10352 through `encoder_ratio` r:
r = 0 is SPT (a directly trained [N, d] table), r = 1 is XPE (a trained [N, d_in] table
passed through a three-layer MLP), and 0 < r < 1 is DUAL: max(1, min(N-1, int(N*r))) XPE
rows and the rest SPT rows, the SPT rows first. Each part has its own table sized to its
own token count. The prompt is independent of the input, so forward() returns it once, as
[N, d], and callers broadcast it over the batch.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from . import ops


def split_virtual_tokens(num_virtual_tokens: int, encoder_ratio: float) -> tuple[int, int]:
    """(SPT rows, XPE rows) for N virtual tokens and encoder ratio r."""
    if isinstance(num_virtual_tokens, bool) or not isinstance(num_virtual_tokens, int):
        raise TypeError(
            f"num_virtual_tokens must be an int, got {type(num_virtual_tokens).__name__}"
        )
    if num_virtual_tokens < 1:
        raise ValueError(f"num_virtual_tokens must be >= 1, got {num_virtual_tokens}")
    r = float(encoder_ratio)
    if not math.isfinite(r) or not 0.0 <= r <= 1.0:
        raise ValueError(f"encoder_ratio must be in [0, 1], got {encoder_ratio}")
    n = num_virtual_tokens
    if r == 0.0:
        return n, 0
    if r == 1.0:
        return 0, n
    if n < 2:
        raise ValueError(
            "DUAL (0 < encoder_ratio < 1) needs num_virtual_tokens >= 2 "
            f"to hold both parts, got {n}"
        )
    # round(., 9) only removes float fuzz (0.29 * 100 = 28.999999999999996); otherwise int(N*r).
    n_xpe = max(1, min(n - 1, int(round(n * r, 9))))
    return n - n_xpe, n_xpe


def method_name(encoder_ratio: float) -> str:
    r = float(encoder_ratio)
    return "spt" if r == 0.0 else "xpe" if r == 1.0 else "dual"


class PromptEncoderMLP(nn.Module):
    """Linear(d_in, h), ReLU, Dropout, Linear(h, h), ReLU, Dropout, Linear(h, d), run fused."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        output_size: int,
        dropout: float = 0.1,
        backend: str | None = None,
    ):
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.fc1 = nn.Linear(input_size, hidden_size)
        self.fc2 = nn.Linear(hidden_size, hidden_size)
        self.fc3 = nn.Linear(hidden_size, output_size)
        self.dropout = dropout
        self.backend = backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        if torch.is_autocast_enabled(x.device.type):
            dtype = torch.get_autocast_dtype(x.device.type)
        cast = lambda t: t.to(dtype)
        with torch.autocast(x.device.type, enabled=False):
            return ops.prompt_encoder_mlp(
                cast(x),
                cast(self.fc1.weight),
                cast(self.fc1.bias),
                cast(self.fc2.weight),
                cast(self.fc2.bias),
                cast(self.fc3.weight),
                cast(self.fc3.bias),
                dropout_p=self.dropout,
                training=self.training,
                backend=self.backend,
            )

    def extra_repr(self) -> str:
        return f"dropout={self.dropout}"


class CrossPromptEncoder(nn.Module):
    """SPT / XPE / DUAL prompt of `num_virtual_tokens` rows of width `hidden_size`.

    Args:
        num_virtual_tokens: N (paper: 20).
        hidden_size: d, the backbone's hidden size.
        encoder_ratio: r in [0, 1]; 0 = SPT, 1 = XPE, otherwise DUAL.
        encoder_hidden_size: h of the MLP (paper: 256).
        encoder_input_size: d_in of the XPE input table (default d).
        dropout: MLP dropout (0.1 on source languages, 0.0 on a target language).
    """

    def __init__(
        self,
        num_virtual_tokens: int,
        hidden_size: int,
        encoder_ratio: float = 1.0,
        encoder_hidden_size: int = 256,
        encoder_input_size: int | None = None,
        dropout: float = 0.1,
        backend: str | None = None,
    ):
        super().__init__()
        if hidden_size < 1 or encoder_hidden_size < 1:
            raise ValueError("hidden_size and encoder_hidden_size must be >= 1")
        self.num_spt, self.num_xpe = split_virtual_tokens(num_virtual_tokens, encoder_ratio)
        self.num_virtual_tokens = num_virtual_tokens
        self.hidden_size = hidden_size
        self.encoder_ratio = float(encoder_ratio)
        self.encoder_hidden_size = encoder_hidden_size
        self.encoder_input_size = encoder_input_size or hidden_size
        # N(0, 1) rows, as nn.Embedding's default init (not copies of vocabulary rows).
        self.spt_embedding = (
            nn.Parameter(torch.randn(self.num_spt, hidden_size)) if self.num_spt else None
        )
        if self.num_xpe:
            self.xpe_embedding = nn.Parameter(torch.randn(self.num_xpe, self.encoder_input_size))
            self.encoder = PromptEncoderMLP(
                self.encoder_input_size, encoder_hidden_size, hidden_size, dropout, backend
            )
        else:
            self.xpe_embedding = None
            self.encoder = None

    @property
    def method(self) -> str:
        return method_name(self.encoder_ratio)

    def set_dropout(self, p: float) -> None:
        """0.1 while training on source languages, 0.0 when training on a target language."""
        if self.encoder is not None:
            self.encoder.dropout = float(p)

    def forward(self) -> torch.Tensor:
        """The prompt, [N, d]: SPT rows first, then the encoded XPE rows."""
        parts = []
        if self.spt_embedding is not None:
            parts.append(self.spt_embedding)
        if self.encoder is not None:
            parts.append(self.encoder(self.xpe_embedding))
        if len(parts) == 1:
            return parts[0]
        dtype = parts[-1].dtype
        return torch.cat([p.to(dtype) for p in parts], dim=0)

    def extra_repr(self) -> str:
        return (
            f"method={self.method}, num_virtual_tokens={self.num_virtual_tokens}, "
            f"spt={self.num_spt}, xpe={self.num_xpe}, hidden_size={self.hidden_size}"
        )
