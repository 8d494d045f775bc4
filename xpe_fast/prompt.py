"""The prompt module: standard soft prompt (SPT), Cross-Prompt Encoder (XPE) and DUAL.

One module covers the three methods of arXiv 2508.10352 through `encoder_ratio` r:
r = 0 is SPT (a directly trained [N, d] table), r = 1 is XPE (a trained [N, d_in] table
passed through a three-layer MLP), and 0 < r < 1 is DUAL: max(1, min(N-1, int(N*r))) XPE
rows and the rest SPT rows, the SPT rows first. Each part has its own table sized to its
own token count. The prompt is independent of the input, so forward() returns it once, as
[N, d], and callers broadcast it over the batch; only with the dropout scope "sample" (the
paper's code, which runs its MLP for every batch row) does each training sample get its own
MLP dropout masks, and forward(batch_size) then returns [B, N, d].
"""

from __future__ import annotations

import math

import torch
from torch import nn

from . import fast_dropout, ops


def split_virtual_tokens(
    num_virtual_tokens: int, encoder_ratio: float, num_xpe_tokens: int | None = None
) -> tuple[int, int]:
    """(SPT rows, XPE rows) for N virtual tokens and encoder ratio r. `num_xpe_tokens`, when
    given, is the split itself (a loaded adapter's, read from its tensors' shapes): it is
    checked against r's method, never recomputed."""
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
    if num_xpe_tokens is not None:
        return _explicit_split(n, r, num_xpe_tokens)
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


def _explicit_split(n: int, r: float, n_xpe) -> tuple[int, int]:
    if isinstance(n_xpe, bool) or not isinstance(n_xpe, int):
        raise TypeError(f"num_xpe_tokens must be an int, got {type(n_xpe).__name__}")
    lo, hi = (0, 0) if r == 0.0 else (n, n) if r == 1.0 else (1, n - 1)
    if not lo <= n_xpe <= hi:
        raise ValueError(
            f"num_xpe_tokens {n_xpe} does not fit {method_name(r)} (encoder_ratio {r:g}) "
            f"with {n} virtual tokens: it must be in [{lo}, {hi}]"
        )
    return n - n_xpe, n_xpe


DROPOUT_SCOPES = ("batch", "sample")


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

    def forward(self, x: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        """[N, d_in] -> [N, d]; with `batch_size` B while training with dropout, the rows are
        run once per sample with the sample's own dropout masks: [B, N, d]."""
        dtype = x.dtype
        if torch.is_autocast_enabled(x.device.type):
            dtype = torch.get_autocast_dtype(x.device.type)
        cast = lambda t: t.to(dtype)
        per_sample = batch_size is not None and self.training and self.dropout > 0.0
        masks = None
        if per_sample:
            n, h = x.shape[0], self.fc1.out_features
            x = x.unsqueeze(0).expand(batch_size, -1, -1).reshape(batch_size * n, -1)
            masks = tuple(
                fast_dropout.sample_keep_mask(
                    (batch_size, n, h), self.dropout, dtype, x.device
                ).reshape(batch_size * n, h)
                for _ in range(2)
            )
        with torch.autocast(x.device.type, enabled=False):
            out = ops.prompt_encoder_mlp(
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
                masks=masks,
            )
        return out.reshape(batch_size, -1, out.shape[-1]) if per_sample else out

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
        num_xpe_tokens: the split itself instead of r's (a loaded adapter's, from its
            tensors' shapes; checked against r's method).
        dropout_scope: "batch" (one set of MLP dropout masks per step, the prompt computed
            once and broadcast) or "sample" (each sample its own masks, as the paper's code
            draws them; masks numbered by global sample index).
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
        num_xpe_tokens: int | None = None,
        dropout_scope: str = "batch",
    ):
        super().__init__()
        if hidden_size < 1 or encoder_hidden_size < 1:
            raise ValueError("hidden_size and encoder_hidden_size must be >= 1")
        if encoder_input_size is not None and encoder_input_size < 1:
            raise ValueError(f"encoder_input_size must be >= 1, got {encoder_input_size}")
        if dropout_scope not in DROPOUT_SCOPES:
            raise ValueError(
                f"dropout_scope must be one of {DROPOUT_SCOPES}, got {dropout_scope!r}"
            )
        self.dropout_scope = dropout_scope
        self.num_spt, self.num_xpe = split_virtual_tokens(
            num_virtual_tokens, encoder_ratio, num_xpe_tokens
        )
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

    def per_sample(self) -> bool:
        """Whether forward(batch_size) gives each sample its own prompt (its own MLP dropout
        masks): dropout scope "sample", training, with MLP dropout."""
        return (
            self.dropout_scope == "sample"
            and self.training
            and self.encoder is not None
            and self.encoder.dropout > 0.0
        )

    def forward(self, batch_size: int | None = None) -> torch.Tensor:
        """The prompt, [N, d]: SPT rows first, then the encoded XPE rows; [batch_size, N, d]
        when per_sample() (the SPT rows are then the same for every sample)."""
        per_sample = batch_size is not None and self.per_sample()
        parts = []
        if self.spt_embedding is not None:
            spt = self.spt_embedding
            parts.append(spt.unsqueeze(0).expand(batch_size, -1, -1) if per_sample else spt)
        if self.encoder is not None:
            parts.append(self.encoder(self.xpe_embedding, batch_size if per_sample else None))
        if len(parts) == 1:
            return parts[0]
        dtype = parts[-1].dtype
        return torch.cat([p.to(dtype) for p in parts], dim=-2)

    def extra_repr(self) -> str:
        return (
            f"method={self.method}, num_virtual_tokens={self.num_virtual_tokens}, "
            f"spt={self.num_spt}, xpe={self.num_xpe}, hidden_size={self.hidden_size}, "
            f"dropout_scope={self.dropout_scope}"
        )
