"""The encoder's fast path: a BERT/XLM-R encoder stack run layer by layer, computing what the
Hugging Face layers compute, faster.

- `first_row_layer`: the last layer for slot 0 only (the classifier reads nothing else).
- `inference_layer` (no gradient, no dropout): query/key/value as one GEMM (`fused_qkv`)
  read directly by the attention kernel (ops.packed_attention), each residual add +
  LayerNorm in one pass that also writes the next GEMM's bf16 input (ops.residual_layer_norm),
  the GELU fused into the feed-forward GEMM.
- `unpadded_layer`: a layer over the real tokens only, packed [T, d] (no FLOP spent on
  padding): its linears on the packed rows, attention by flash varlen (CUDA inference) or
  padded per batch (training: the attention dropout's masks as in the padded layer), every
  hidden dropout with the masks the padded [B, S, d] tensor draws (numbered by global sample
  index, so results equal the padded route and do not depend on the number of processes).
- `run_encoder`: the stack with those, for the model's forward.

`FastPathOptions` holds the switches (benchmarks/profile_model.py turns them off to measure
what they bring); the defaults are what the model runs.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import fast_dropout, ops
from .frozen_linear import FrozenLinear, prepare_frozen_linears, tensor_version
from .module_swap import FUSED_QKV, recall, remember
from .ops.packed_attention import kernel_preferred as packed_attention_preferred


@dataclass
class FastPathOptions:
    """inference_kernels: the C++ inference kernels (packed attention, residual LayerNorm)
    where cpu_paths prefers them; short_keys: up to this many keys, attention by matmul +
    softmax, beyond it torch's SDPA; first_row_last_layer: the last layer for slot 0 only;
    unpadded: the layers before the last over the real tokens only (unpadded_layer)."""

    inference_kernels: bool = True
    short_keys: int = fast_dropout.SHORT_KEYS
    first_row_last_layer: bool = True
    unpadded: bool | None = None  # layers over the real tokens only; None: on CUDA


def supports_first_row(layer: nn.Module) -> bool:
    att = getattr(layer, "attention", None)
    sa = getattr(att, "self", None)
    return (
        all(
            hasattr(sa, n)
            for n in (
                "query",
                "key",
                "value",
                "num_attention_heads",
                "attention_head_size",
                "scaling",
                "dropout",
            )
        )
        and hasattr(att, "output")
        and hasattr(layer, "intermediate")
        and hasattr(layer, "output")
        and not getattr(sa, "is_cross_attention", False)
    )


def first_row_layer(
    layer: nn.Module,
    hidden: torch.Tensor,
    mask4d,
    hidden16: torch.Tensor | None = None,
    opts: FastPathOptions = FastPathOptions(),
) -> torch.Tensor:
    """A BERT/XLM-R encoder layer computed for slot 0 only: [B, S, d] -> [B, 1, d].

    Exact for the classifier, which reads only slot 0 of the last layer: keys and values
    still come from every slot, but the query, attention output and feed-forward run for one
    row instead of N + L. `hidden16`: a bf16 copy of `hidden` for the projections (inference
    under bf16 autocast), or None.
    """
    att = layer.attention
    sa = att.self
    B, S, _ = hidden.shape
    h, hd = sa.num_attention_heads, sa.attention_head_size
    first = hidden[:, :1]
    src = hidden if hidden16 is None else hidden16
    q = sa.query(src[:, :1]).view(B, 1, h, hd).transpose(1, 2)
    k = sa.key(src).view(B, S, h, hd).transpose(1, 2)
    v = sa.value(src).view(B, S, h, hd).transpose(1, 2)
    mask = mask4d[:, :, :1] if isinstance(mask4d, torch.Tensor) and mask4d.dim() == 4 else mask4d
    p = sa.dropout.p if sa.training else 0.0
    if isinstance(sa.dropout, fast_dropout.FastDropout) and fast_dropout.available(q):
        ctx = fast_dropout.attend(q, k, v, mask, sa.scaling, p, opts.short_keys)
    else:
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=sa.scaling, dropout_p=p)
    ctx = ctx.transpose(1, 2).reshape(B, 1, h * hd)
    a = att.output(ctx, first)
    return layer.output(layer.intermediate(a), a)


def fused_qkv(sa: nn.Module) -> nn.Linear:
    """One frozen linear layer holding query, key and value (built once, rebuilt if their
    weights change); kept outside the module tree so state_dict is unchanged."""
    parts = (sa.query, sa.key, sa.value)
    key = tuple(
        (m.weight.data_ptr(), tensor_version(m.weight), tensor_version(m.bias)) for m in parts
    )
    cached = recall(sa, FUSED_QKV)
    if cached is None or cached[0] != key:
        with torch.inference_mode(False):  # a normal tensor even when first built in eval
            return _build_fused_qkv(sa, parts, key)
    return cached[1]


def _build_fused_qkv(sa, parts, key) -> nn.Linear:
    with torch.no_grad():
        w = torch.cat([m.weight.detach() for m in parts])
        # skip_init: no random initialization, which would draw from torch's generator and
        # shift every later dropout mask of a seeded run
        lin = torch.nn.utils.skip_init(
            nn.Linear, w.shape[1], w.shape[0], device=w.device, dtype=w.dtype
        )
        lin.weight.copy_(w)
        lin.bias.copy_(torch.cat([m.bias.detach() for m in parts]))
    lin.requires_grad_(False)
    prepare_frozen_linears(lin)
    remember(sa, FUSED_QKV, (key, lin))
    return lin


def _exact_gelu(act) -> bool:
    from transformers.activations import GELUActivation

    return isinstance(act, GELUActivation) and getattr(act, "act", None) is F.gelu


def _standard_output(out: nn.Module) -> bool:
    """A BERT-style output block: LayerNorm(dropout(dense(x)) + residual)."""
    return (
        isinstance(getattr(out, "dense", None), nn.Linear)
        and isinstance(getattr(out, "LayerNorm", None), nn.LayerNorm)
        and out.LayerNorm.weight is not None
        and out.LayerNorm.bias is not None
    )


def _output_block(
    out: nn.Module, x: torch.Tensor, residual: torch.Tensor, bf16_copy: bool, opts: FastPathOptions
):
    """(out(x, residual), its bf16 copy or None) for inference (dropout is the identity)."""
    if not (opts.inference_kernels and _standard_output(out)):
        return out(x, residual), None
    ln = out.LayerNorm
    return ops.residual_layer_norm(
        out.dense(x), residual, ln.weight, ln.bias, ln.eps, bf16_copy=bf16_copy
    )


def inference_layer(
    layer: nn.Module,
    hidden: torch.Tensor,
    mask4d,
    key_mask: torch.Tensor | None = None,
    hidden16: torch.Tensor | None = None,
    opts: FastPathOptions = FastPathOptions(),
):
    """A BERT/XLM-R encoder layer for inference (no gradient, no dropout), computing what
    the Hugging Face layer computes; returns (hidden, its bf16 copy or None).

    Query, key and value are one GEMM (the input read and cast once); attention reads that
    packed output directly (ops.packed_attention, with `key_mask` [B, S], the additive
    key-padding mask) and writes the layout the output projection takes; each residual add
    + LayerNorm is one pass that also writes the bf16 input of the next GEMM under bf16
    autocast (`hidden16`: that copy of `hidden`); the feed-forward GELU is fused into its
    GEMM (oneDNN post-op) where the layer's activation is the exact GELU."""
    att = layer.attention
    sa = att.self
    B, S, _ = hidden.shape
    h, hd = sa.num_attention_heads, sa.attention_head_size
    qkv = fused_qkv(sa)(hidden16 if hidden16 is not None else hidden)
    if opts.inference_kernels and key_mask is not None and packed_attention_preferred(qkv, h):
        ctx = ops.packed_attention(qkv, key_mask, h, sa.scaling)
    else:
        x = qkv.view(B, S, 3, h, hd).permute(2, 0, 3, 1, 4)
        ctx = fast_dropout.attend(x[0], x[1], x[2], mask4d, sa.scaling, 0.0, opts.short_keys)
        ctx = ctx.transpose(1, 2).reshape(B, S, h * hd)
    # Under bf16 autocast the next GEMMs take bf16: write that copy in the same pass.
    bf16 = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    a, a16 = _output_block(att.output, ctx, hidden, bf16, opts)
    a_in = a16 if a16 is not None else a
    inter = layer.intermediate
    if isinstance(inter.dense, FrozenLinear) and _exact_gelu(inter.intermediate_act_fn):
        i = inter.dense.forward_gelu(a_in)
    else:
        i = inter(a_in)
    return _output_block(layer.output, i, a, bf16, opts)


@functools.cache
def _varlen_attn():
    """torch's flash attention over packed sequences (torch >= 2.10), or None. Imported on
    first use: the module pulls in torch._dynamo, over a second of every command's start."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


@dataclass
class Packing:
    """Where the real tokens of a [B, S] batch are: `idx`, their flat indices in row-major
    order (each sample's tokens contiguous), `cu` the cumulative lengths [B + 1] (int32),
    `longest`, and the additive key-padding mask [B, 1, 1, S] of the padded layout."""

    idx: torch.Tensor
    cu: torch.Tensor
    longest: int
    B: int
    S: int
    mask4d: torch.Tensor

    @classmethod
    def of(cls, mask4d: torch.Tensor) -> Packing:
        real = mask4d[:, 0, 0, :] == 0
        lengths = real.sum(1)
        cu = F.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
        idx = real.reshape(-1).nonzero().squeeze(1)
        return cls(idx, cu, int(lengths.max()), real.shape[0], real.shape[1], mask4d)

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """[T, ...] -> [B, S, ...], zeros in the padding."""
        out = x.new_zeros((self.B * self.S, *x.shape[1:])).index_copy(0, self.idx, x)
        return out.view(self.B, self.S, *x.shape[1:])

    def unpad(self, x: torch.Tensor) -> torch.Tensor:
        """[B, S, ...] -> [T, ...]."""
        return x.reshape(self.B * self.S, *x.shape[2:]).index_select(0, self.idx)


def _packed_dropout(y: torch.Tensor, drop: nn.Module, pk: Packing) -> torch.Tensor:
    """`drop` on packed rows with the masks it would draw on the padded [B, S, d] tensor."""
    if not drop.training or drop.p == 0.0:
        return y
    ones = torch.ones(pk.B, pk.S, y.shape[-1], device=y.device, dtype=y.dtype)
    return y * pk.unpad(drop(ones))


def _flash_varlen_fits(q: torch.Tensor) -> bool:
    """flash attention's varlen kernel: CUDA, half precision, head size a multiple of 8."""
    return (
        q.is_cuda
        and q.dtype in (torch.float16, torch.bfloat16)
        and q.shape[-1] % 8 == 0
        and q.shape[-1] <= 256
        and _varlen_attn() is not None
    )


def _packed_attention(sa: nn.Module, x: torch.Tensor, pk: Packing, opts) -> torch.Tensor:
    h, hd = sa.num_attention_heads, sa.attention_head_size
    q, k, v = (m(x).view(-1, h, hd) for m in (sa.query, sa.key, sa.value))
    p = sa.dropout.p if sa.training else 0.0
    if p == 0.0 and not torch.is_grad_enabled() and _flash_varlen_fits(q):
        ctx = _varlen_attn()(q, k, v, pk.cu, pk.cu, pk.longest, pk.longest, scale=sa.scaling)
        return ctx.reshape(-1, h * hd)
    # the padded layer's attention, its dropout's masks included
    qp, kp, vp = (pk.pad(t).transpose(1, 2) for t in (q, k, v))
    ctx = fast_dropout.attend(qp, kp, vp, pk.mask4d, sa.scaling, p, opts.short_keys)
    return pk.unpad(ctx.transpose(1, 2).reshape(pk.B, pk.S, h * hd))


def _packed_output(out: nn.Module, x: torch.Tensor, residual: torch.Tensor, pk: Packing):
    return out.LayerNorm(_packed_dropout(out.dense(x), out.dropout, pk) + residual)


def supports_unpadded(layer: nn.Module) -> bool:
    return (
        supports_first_row(layer)
        and _standard_output(layer.attention.output)
        and _standard_output(layer.output)
        and all(hasattr(o, "dropout") for o in (layer.attention.output, layer.output))
    )


def unpadded_layer(layer: nn.Module, x: torch.Tensor, pk: Packing, opts) -> torch.Tensor:
    """A BERT/XLM-R encoder layer over the packed real tokens x [T, d] (see Packing)."""
    att = layer.attention
    a = _packed_output(att.output, _packed_attention(att.self, x, pk, opts), x, pk)
    return _packed_output(layer.output, layer.intermediate(a), a, pk)


def _runs_unpadded(hidden, mask4d, attn_is_fast: bool, layers, opts) -> bool:
    want = hidden.is_cuda if opts.unpadded is None else opts.unpadded
    return (
        want
        and attn_is_fast
        and isinstance(mask4d, torch.Tensor)
        and mask4d.dim() == 4
        and mask4d.shape[1:3] == (1, 1)
        and all(supports_unpadded(layer) for layer in layers[:-1])
    )


def run_encoder(
    encoder: nn.Module,
    hidden: torch.Tensor,
    mask4d,
    attn_is_fast: bool,
    first_row_only: bool,
    opts: FastPathOptions,
) -> torch.Tensor:
    """The encoder stack on the embedding stream `hidden` [B, S, d]: the Hugging Face stack,
    or (with `first_row_only`, for the classifier) layer by layer with the last layer for slot
    0 only and, in inference on the CPU, `inference_layer`; returns [B, S, d] or [B, 1, d].
    `attn_is_fast`: the backbone attends through fast_dropout's implementation, whose mask is
    the additive key-padding mask [B, 1, 1, S] that the inference kernels read."""
    layers = getattr(encoder, "layer", None)
    if (
        not first_row_only
        or not opts.first_row_last_layer
        or not layers
        or not supports_first_row(layers[-1])
    ):
        return encoder(hidden, attention_mask=mask4d).last_hidden_state
    if _runs_unpadded(hidden, mask4d, attn_is_fast, layers, opts):
        pk = Packing.of(mask4d)
        x = pk.unpad(hidden)
        for layer in layers[:-1]:
            x = unpadded_layer(layer, x, pk, opts)
        return first_row_layer(layers[-1], pk.pad(x), mask4d, None, opts)
    inference = (
        not torch.is_grad_enabled()
        and not encoder.training
        and attn_is_fast
        and hidden.device.type == "cpu"
    )
    key_mask = None
    if (
        inference
        and isinstance(mask4d, torch.Tensor)
        and mask4d.dim() == 4
        and mask4d.shape[1:3] == (1, 1)
    ):
        key_mask = mask4d[:, 0, 0, :].float().contiguous()
    hidden16 = None
    for layer in layers[:-1]:
        if inference and supports_first_row(layer):
            hidden, hidden16 = inference_layer(layer, hidden, mask4d, key_mask, hidden16, opts)
            continue
        hidden = layer(hidden, mask4d)
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        hidden16 = None
    return first_row_layer(layers[-1], hidden, mask4d, hidden16, opts)
