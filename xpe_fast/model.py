"""A frozen Hugging Face encoder with an SPT / XPE / DUAL prompt and a trainable head.

The prompt enters exactly as in PEFT (the semantics the paper's numbers come from): the N
prompt rows go in front of `<s>`, the attention mask gets N leading ones, the encoder's own
embedding layer adds position rows numbered over all N + L slots from the model's own offset
(padding_idx + 1 for XLM-R/RoBERTa, 0 for BERT), token type 0 and its LayerNorm, and the
head reads the final hidden state of slot 0, the first virtual token.

The fused path computes that embedding stream with `ops.assemble_embeddings` and feeds it
straight to the encoder stack; `backend="reference"` instead calls the unmodified Hugging Face
model with `inputs_embeds`, which is what PEFT does.

Other than that route, the frozen backbone is prepared once for speed, without changing its
function: its linear layers run on oneDNN with no weight gradients (frozen_linear.py), its
dropouts draw counter-based masks and its attention takes a key-padding mask
(fast_dropout.py), inference runs query/key/value as one GEMM read directly by the attention
kernel, each residual add + LayerNorm in one pass and the GELU fused into the feed-forward
GEMM (inference_layer, ops.packed_attention, ops.residual_layer_norm), and the last layer
runs for slot 0 only.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import ops
from . import fast_dropout
from .frozen_linear import (FrozenLinear, prepare_frozen_linears, set_frozen_linears_fast,
                            tensor_version)
from .prompt import CrossPromptEncoder


class UnsupportedBackboneError(ValueError):
    """A backbone whose layers this package cannot run exactly."""


def _supported_message() -> str:
    from .backbones import SUPPORTED_FAMILIES

    return ("supported: " + ", ".join(SUPPORTED_FAMILIES) + " encoders (BERT-style layers, "
            "absolute positions), or any encoder whose logits equal the plain Hugging Face "
            "route's")


@dataclass
class EmbeddingParts:
    """The frozen pieces of a backbone's embedding layer that the prompt goes through."""
    word: nn.Embedding
    position: nn.Embedding
    token_type: nn.Embedding | None
    layer_norm: nn.LayerNorm
    dropout: nn.Module
    position_offset: int


def find_embedding_parts(backbone: nn.Module) -> EmbeddingParts:
    """Locate word/position/type embeddings and the embedding LayerNorm of a BERT-like encoder."""
    emb = getattr(backbone, "embeddings", None)
    word = getattr(emb, "word_embeddings", None)
    pos = getattr(emb, "position_embeddings", None)
    ln = getattr(emb, "LayerNorm", None) or getattr(emb, "layer_norm", None)
    if not isinstance(word, nn.Embedding) or not isinstance(pos, nn.Embedding) or \
            not isinstance(ln, nn.LayerNorm):
        raise UnsupportedBackboneError(
            f"{type(backbone).__name__} has no recognizable embedding layer: expected "
            "`.embeddings` with `word_embeddings`, `position_embeddings` (absolute) and "
            "`LayerNorm`; " + _supported_message())
    if not hasattr(backbone, "encoder"):
        raise UnsupportedBackboneError(f"{type(backbone).__name__} has no `.encoder` stack; "
                                       + _supported_message())
    kind = getattr(backbone.config, "position_embedding_type", "absolute")
    if kind not in (None, "absolute"):
        raise UnsupportedBackboneError(f"position_embedding_type={kind!r} is not supported "
                                       "(absolute only); " + _supported_message())
    tt = getattr(emb, "token_type_embeddings", None)
    # RoBERTa-family embeddings number positions from padding_idx + 1 when given inputs_embeds.
    if hasattr(emb, "create_position_ids_from_inputs_embeds") and \
            getattr(emb, "padding_idx", None) is not None:
        offset = int(emb.padding_idx) + 1
    else:
        offset = 0
    dropout = getattr(emb, "dropout", None) or nn.Identity()
    return EmbeddingParts(word, pos, tt if isinstance(tt, nn.Embedding) else None, ln, dropout,
                          offset)


def _base_model(model: nn.Module) -> nn.Module:
    """The bare encoder of a Hugging Face model (BertModel inside BertFor..., etc.)."""
    if hasattr(model, "embeddings") and hasattr(model, "encoder"):
        return model
    base = getattr(model, "base_model", None)
    if base is not None and base is not model:
        return base
    return model


def _supports_first_row(layer: nn.Module) -> bool:
    att = getattr(layer, "attention", None)
    sa = getattr(att, "self", None)
    return (all(hasattr(sa, n) for n in ("query", "key", "value", "num_attention_heads",
                                          "attention_head_size", "scaling", "dropout"))
            and hasattr(att, "output") and hasattr(layer, "intermediate")
            and hasattr(layer, "output") and not getattr(sa, "is_cross_attention", False))


def first_row_layer(layer: nn.Module, hidden: torch.Tensor, mask4d,
                    hidden16: torch.Tensor | None = None) -> torch.Tensor:
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
        ctx = fast_dropout.attend(q, k, v, mask, sa.scaling, p)
    else:
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=sa.scaling,
                                             dropout_p=p)
    ctx = ctx.transpose(1, 2).reshape(B, 1, h * hd)
    a = att.output(ctx, first)
    return layer.output(layer.intermediate(a), a)


def _fused_qkv(sa: nn.Module) -> nn.Linear:
    """One frozen linear layer holding query, key and value (built once, rebuilt if their
    weights change); kept outside the module tree so state_dict is unchanged."""
    parts = (sa.query, sa.key, sa.value)
    key = tuple((m.weight.data_ptr(), tensor_version(m.weight), tensor_version(m.bias))
                for m in parts)
    cached = sa.__dict__.get("_xpe_fast_qkv")
    if cached is None or cached[0] != key:
        with torch.inference_mode(False):  # a normal tensor even when first built in eval
            return _build_fused_qkv(sa, parts, key)
    return cached[1]


def _build_fused_qkv(sa, parts, key) -> nn.Linear:
    with torch.no_grad():
        w = torch.cat([m.weight.detach() for m in parts])
        # skip_init: no random initialization, which would draw from torch's generator and
        # shift every later dropout mask of a seeded run
        lin = torch.nn.utils.skip_init(nn.Linear, w.shape[1], w.shape[0], device=w.device,
                                       dtype=w.dtype)
        lin.weight.copy_(w)
        lin.bias.copy_(torch.cat([m.bias.detach() for m in parts]))
    lin.requires_grad_(False)
    prepare_frozen_linears(lin)
    sa.__dict__["_xpe_fast_qkv"] = (key, lin)
    return lin


def _exact_gelu(act) -> bool:
    from transformers.activations import GELUActivation

    return isinstance(act, GELUActivation) and getattr(act, "act", None) is F.gelu


# The C++ inference kernels of inference_layer (ops.packed_attention and
# ops.residual_layer_norm); False runs the same layer with fast_dropout.attend and the Hugging
# Face output blocks (benchmarks/profile_model.py measures the evaluation pass both ways).
INFERENCE_KERNELS = True


def _standard_output(out: nn.Module) -> bool:
    """A BERT-style output block: LayerNorm(dropout(dense(x)) + residual)."""
    return isinstance(getattr(out, "dense", None), nn.Linear) and \
        isinstance(getattr(out, "LayerNorm", None), nn.LayerNorm) and \
        out.LayerNorm.weight is not None and out.LayerNorm.bias is not None


def _output_block(out: nn.Module, x: torch.Tensor, residual: torch.Tensor, bf16_copy: bool):
    """(out(x, residual), its bf16 copy or None) for inference (dropout is the identity)."""
    if not (INFERENCE_KERNELS and _standard_output(out)):
        return out(x, residual), None
    ln = out.LayerNorm
    return ops.residual_layer_norm(out.dense(x), residual, ln.weight, ln.bias, ln.eps,
                                   bf16_copy=bf16_copy)


def inference_layer(layer: nn.Module, hidden: torch.Tensor, mask4d,
                    key_mask: torch.Tensor | None = None, hidden16: torch.Tensor | None = None):
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
    qkv = _fused_qkv(sa)(hidden16 if hidden16 is not None else hidden)
    if INFERENCE_KERNELS and key_mask is not None and ops.packed_attention_applies(qkv, h):
        ctx = ops.packed_attention(qkv, key_mask, h, sa.scaling)
    else:
        x = qkv.view(B, S, 3, h, hd).permute(2, 0, 3, 1, 4)
        ctx = fast_dropout.attend(x[0], x[1], x[2], mask4d, sa.scaling, 0.0)
        ctx = ctx.transpose(1, 2).reshape(B, S, h * hd)
    # Under bf16 autocast the next GEMMs take bf16: write that copy in the same pass.
    bf16 = torch.is_autocast_enabled("cpu") and \
        torch.get_autocast_dtype("cpu") == torch.bfloat16
    a, a16 = _output_block(att.output, ctx, hidden, bf16)
    a_in = a16 if a16 is not None else a
    inter = layer.intermediate
    if isinstance(inter.dense, FrozenLinear) and _exact_gelu(inter.intermediate_act_fn):
        i = inter.dense.forward_gelu(a_in)
    else:
        i = inter(a_in)
    return _output_block(layer.output, i, a, bf16)


class ClassificationHead(nn.Module):
    """The backbone family's own head, reading slot 0 (the first virtual token).

    roberta: dropout, dense, tanh, dropout, out_proj (XLM-R/RoBERTa's classification head).
    bert: pooler dense, tanh, dropout, classifier; the dense starts from the backbone's pooler.
    """

    def __init__(self, hidden_size: int, num_labels: int, dropout: float, style: str,
                 pooler_dense: nn.Linear | None = None):
        super().__init__()
        self.style = style
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(hidden_size, num_labels)
        if pooler_dense is not None:
            with torch.no_grad():
                self.dense.weight.copy_(pooler_dense.weight)
                self.dense.bias.copy_(pooler_dense.bias)

    def forward(self, first: torch.Tensor) -> torch.Tensor:
        x = first
        if self.style == "roberta":
            x = self.dropout(x)
        x = torch.tanh(self.dense(x))
        x = self.dropout(x)
        return self.out_proj(x)


class PromptedEncoderForSequenceClassification(nn.Module):
    """Frozen encoder + SPT/XPE/DUAL prompt + trainable head.

    Args:
        backbone: any Hugging Face BERT/RoBERTa/XLM-R-style model (bare or with a head; the
            bare encoder is used), with pretrained or random weights. It is frozen.
        num_labels: number of classes.
        num_virtual_tokens, encoder_ratio, encoder_hidden_size, prompt_dropout: the prompt
            (see CrossPromptEncoder); encoder_ratio 0 = SPT, 1 = XPE, between = DUAL.
        classifier_dropout: head dropout (default: the backbone's hidden dropout).
        backend: backend of the fused ops (None = best available; "reference" runs the plain
            Hugging Face model with inputs_embeds).
        head_style: "roberta" or "bert"; default from the backbone family.
    """

    def __init__(self, backbone: nn.Module, num_labels: int, num_virtual_tokens: int = 20,
                 encoder_ratio: float = 1.0, encoder_hidden_size: int = 256,
                 prompt_dropout: float = 0.1, classifier_dropout: float | None = None,
                 backend: str | None = None, head_style: str | None = None):
        super().__init__()
        if num_labels < 1:
            raise ValueError(f"num_labels must be >= 1, got {num_labels}")
        backbone = _base_model(backbone)
        self.parts = find_embedding_parts(backbone)
        self.backbone = backbone
        self.backbone.requires_grad_(False)
        # Frozen: its linear layers need no weight gradients; run them on oneDNN (exact).
        prepare_frozen_linears(self.backbone.encoder)
        # Where the backbone attends through SDPA, attention goes through fast_dropout's
        # implementation (key-padding mask, counter-based dropout); set_backend switches.
        # A backbone already wrapped once carries that implementation: its original is SDPA.
        hf_attn = getattr(backbone.config, "_attn_implementation", None)
        self._hf_attn = "sdpa" if hf_attn == fast_dropout.ATTN_IMPLEMENTATION else hf_attn
        self._fast_attn = self._hf_attn == "sdpa" and fast_dropout.register_attention()
        config = backbone.config
        d = self.parts.word.embedding_dim
        max_pos = self.parts.position.num_embeddings
        if self.parts.position_offset + num_virtual_tokens + 1 > max_pos:
            raise ValueError(
                f"a prompt of {num_virtual_tokens} virtual tokens does not fit the backbone's "
                f"position table ({max_pos} rows, first usable position "
                f"{self.parts.position_offset}): at most "
                f"{max_pos - self.parts.position_offset - 1} virtual tokens leave room for one "
                "input token")
        self.prompt = CrossPromptEncoder(num_virtual_tokens, d, encoder_ratio,
                                         encoder_hidden_size, dropout=prompt_dropout,
                                         backend=backend)
        if head_style is None:
            head_style = "roberta" if self.parts.position_offset > 0 else "bert"
        if head_style not in ("roberta", "bert"):
            raise ValueError(f"head_style must be 'roberta' or 'bert', got {head_style!r}")
        if classifier_dropout is None:
            classifier_dropout = getattr(config, "classifier_dropout", None)
        if classifier_dropout is None:
            classifier_dropout = getattr(config, "hidden_dropout_prob", 0.1)
        pooler = getattr(backbone, "pooler", None)
        pooler_dense = getattr(pooler, "dense", None) if head_style == "bert" else None
        self.head = ClassificationHead(d, num_labels, classifier_dropout, head_style,
                                       pooler_dense if isinstance(pooler_dense, nn.Linear) else None)
        self.num_labels = num_labels
        self.set_backend(backend)
        layers = getattr(backbone.encoder, "layer", None)
        # Last layer for slot 0 only (exact); off for layouts this code does not know.
        self.first_row_last_layer = bool(layers) and _supports_first_row(layers[-1])
        from .backbones import SUPPORTED_FAMILIES

        if getattr(config, "model_type", None) not in SUPPORTED_FAMILIES:
            self._check_matches_reference()

    @torch.no_grad()
    def _check_matches_reference(self) -> None:
        """For a backbone outside the supported families: its logits on a small padded
        input must equal those of the plain Hugging Face route (PEFT's), or it is refused."""
        name = type(self.backbone).__name__
        was_training, backend = self.training, self.backend
        fork = torch.random.fork_rng(devices=[])
        try:
            with fork:
                torch.manual_seed(0)
                V = self.parts.word.num_embeddings
                L = max(2, min(6, self.max_input_length))
                ids = torch.randint(min(3, V - 1), min(V, 100), (2, L),
                                    device=self.parts.word.weight.device)
                mask = torch.ones_like(ids)
                mask[1, L // 2:] = 0
                self.eval()
                fused = self(ids, mask).float()
                self.set_backend("reference")
                ref = self(ids, mask).float()
        except Exception as e:
            raise UnsupportedBackboneError(
                f"{name} ({getattr(self.backbone.config, 'model_type', '?')}) is not supported: "
                f"the fused route fails on it ({e.__class__.__name__}: "
                f"{str(e).splitlines()[0][:160]}); " + _supported_message()) from None
        finally:
            self.set_backend(backend)
            self.train(was_training)
        err = (fused - ref).abs().max().item()
        if not err <= 1e-4 * max(1.0, ref.abs().max().item()):
            raise UnsupportedBackboneError(
                f"{name} ({getattr(self.backbone.config, 'model_type', '?')}) is not supported: "
                f"its logits differ from the plain Hugging Face route by {err:.1e}; "
                + _supported_message())

    def set_backend(self, backend: str | None) -> None:
        """Backend of both fused ops (None = best available, "reference" = plain PyTorch)."""
        self.backend = backend
        if self.prompt.encoder is not None:
            self.prompt.encoder.backend = backend
        # The reference path is the unmodified Hugging Face model (PEFT's route).
        fast = backend != "reference"
        set_frozen_linears_fast(self.backbone, fast)
        for m in (self.backbone, self.head):  # the head's too: masks by global sample index
            if fast:
                fast_dropout.prepare_dropouts(m)
            else:
                fast_dropout.restore_dropouts(m)
        if self._fast_attn:
            self.backbone.config._attn_implementation = (
                fast_dropout.ATTN_IMPLEMENTATION if fast else self._hf_attn)

    # ---- properties -------------------------------------------------------------------
    @property
    def num_virtual_tokens(self) -> int:
        return self.prompt.num_virtual_tokens

    @property
    def max_input_length(self) -> int:
        """Longest token sequence (with <s> and </s>) that fits the position table."""
        return (self.parts.position.num_embeddings - self.parts.position_offset
                - self.num_virtual_tokens)

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    # ---- forward ----------------------------------------------------------------------
    def _extended_mask(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None):
        B, L = input_ids.shape
        if attention_mask is None:
            attention_mask = torch.ones(B, L, dtype=torch.long, device=input_ids.device)
        if attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, "
                             f"input_ids {tuple(input_ids.shape)}")
        ones = torch.ones(B, self.num_virtual_tokens, dtype=attention_mask.dtype,
                          device=attention_mask.device)
        return torch.cat([ones, attention_mask], dim=1)

    def _check_inputs(self, input_ids: torch.Tensor):
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [B, L], got {tuple(input_ids.shape)}")
        if input_ids.shape[1] > self.max_input_length:
            raise ValueError(
                f"inputs of {input_ids.shape[1]} tokens plus {self.num_virtual_tokens} virtual "
                f"tokens exceed the backbone's {self.parts.position.num_embeddings} positions; "
                f"truncate inputs to {self.max_input_length} tokens")

    def embed(self, input_ids: torch.Tensor, prompt: torch.Tensor | None = None) -> torch.Tensor:
        """The embedding stream [B, N + L, d] the encoder stack sees (before dropout)."""
        p = self.parts
        if prompt is None:
            prompt = self.prompt()
        word = p.word.weight
        prompt = prompt.to(word.dtype)
        if p.token_type is not None:
            type_row = p.token_type.weight[0]
        else:
            type_row = torch.zeros_like(p.layer_norm.weight)
        return ops.assemble_embeddings(input_ids, prompt, word, p.position.weight, type_row,
                                       p.layer_norm.weight, p.layer_norm.bias, p.layer_norm.eps,
                                       p.position_offset, backend=self.backend)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               prompt: torch.Tensor | None = None, first_row_only: bool = False) -> torch.Tensor:
        """Final hidden states [B, N + L, d] (with `first_row_only`, possibly only [B, 1, d]:
        the rows the classifier reads)."""
        self._check_inputs(input_ids)
        mask = self._extended_mask(input_ids, attention_mask)
        if prompt is None:
            prompt = self.prompt()
        if self.backend == "reference":
            # Exactly PEFT's route: the unmodified Hugging Face model with inputs_embeds.
            word = self.parts.word(input_ids)
            embeds = torch.cat([prompt.to(word.dtype).unsqueeze(0).expand(
                input_ids.shape[0], -1, -1), word], dim=1)
            return self.backbone(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        from transformers.masking_utils import create_bidirectional_mask

        hidden = self.parts.dropout(self.embed(input_ids, prompt))
        if self.backbone.config._attn_implementation == fast_dropout.ATTN_IMPLEMENTATION:
            # Key-padding mask [B, 1, 1, S], additive: what an encoder's bidirectional mask
            # is, without materializing [B, 1, S, S] (see fast_dropout's attention).
            mask4d = torch.zeros(mask.shape, dtype=hidden.dtype, device=hidden.device)
            mask4d = mask4d.masked_fill_(mask == 0, float("-inf"))[:, None, None, :]
        else:
            mask4d = create_bidirectional_mask(config=self.backbone.config,
                                               inputs_embeds=hidden, attention_mask=mask)
        if not first_row_only or not self.first_row_last_layer:
            return self.backbone.encoder(hidden, attention_mask=mask4d).last_hidden_state
        layers = self.backbone.encoder.layer
        inference = (not torch.is_grad_enabled() and not self.backbone.training
                     and self.backbone.config._attn_implementation
                     == fast_dropout.ATTN_IMPLEMENTATION and hidden.device.type == "cpu")
        key_mask = None
        if inference and isinstance(mask4d, torch.Tensor) and mask4d.dim() == 4 and \
                mask4d.shape[1:3] == (1, 1):
            key_mask = mask4d[:, 0, 0, :].float().contiguous()
        hidden16 = None
        for layer in layers[:-1]:
            if inference and _supports_first_row(layer):
                hidden, hidden16 = inference_layer(layer, hidden, mask4d, key_mask, hidden16)
                continue
            hidden = layer(hidden, mask4d)
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden
            hidden16 = None
        return first_row_layer(layers[-1], hidden, mask4d, hidden16)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, prompt: torch.Tensor | None = None):
        """Logits [B, num_labels]; with `labels`, (loss, logits)."""
        hidden = self.encode(input_ids, attention_mask, prompt, first_row_only=True)
        logits = self.head(hidden[:, 0])
        if labels is None:
            return logits
        return F.cross_entropy(logits.float(), labels), logits
