"""A frozen Hugging Face encoder with an SPT / XPE / DUAL prompt and a trainable head.

The prompt enters exactly as in PEFT (the semantics the paper's numbers come from): the N
prompt rows go in front of `<s>`, the attention mask gets N leading ones, the encoder's own
embedding layer adds position rows numbered over all N + L slots from the model's own offset
(padding_idx + 1 for XLM-R/RoBERTa, 0 for BERT), token type 0 and its LayerNorm, and the
head reads the final hidden state of slot 0, the first virtual token.

Three choices, each one thing:
- `route`: "fused" computes that embedding stream with `ops.assemble_embeddings` and feeds it
  straight to the encoder stack (encoder_fast_path.py: the last layer for slot 0 only, and
  on an accelerated backbone the inference and unpadded layers); "peft" calls the unmodified
  Hugging Face model with `inputs_embeds`, which is what PEFT does.
- `backend`: the kernels of the fused ops (prompt MLP, embedding stream): "reference",
  "cpu", "triton", "cuda" or None (the device's best).
- `accelerate=True` (opt-in; the commands opt in): the backbone is accelerated in place and
  reversibly (acceleration.py says exactly what changes: its linear layers' and dropouts'
  classes, its attention implementation, caches on its modules) without changing its
  function; `model.restore_backbone()` gives the Hugging Face object back.
`set_backend("reference")` is the reference route in one call: reference kernels, route
"peft", backbone restored.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import ops
from .acceleration import accelerate, attends_fast, restore
from .encoder_fast_path import FastPathOptions, run_encoder
from .errors import UnsupportedBackboneError
from .prompt import CrossPromptEncoder


def _supported_message() -> str:
    from .backbones import SUPPORTED_FAMILIES

    return (
        "supported: " + ", ".join(SUPPORTED_FAMILIES) + " encoders (BERT-style layers, "
        "absolute positions), or any encoder whose logits equal the plain Hugging Face "
        "route's"
    )


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
    if (
        not isinstance(word, nn.Embedding)
        or not isinstance(pos, nn.Embedding)
        or not isinstance(ln, nn.LayerNorm)
    ):
        raise UnsupportedBackboneError(
            f"{type(backbone).__name__} has no recognizable embedding layer: expected "
            "`.embeddings` with `word_embeddings`, `position_embeddings` (absolute) and "
            "`LayerNorm`; " + _supported_message()
        )
    if not hasattr(backbone, "encoder"):
        raise UnsupportedBackboneError(
            f"{type(backbone).__name__} has no `.encoder` stack; " + _supported_message()
        )
    kind = getattr(backbone.config, "position_embedding_type", "absolute")
    if kind not in (None, "absolute"):
        raise UnsupportedBackboneError(
            f"position_embedding_type={kind!r} is not supported "
            "(absolute only); " + _supported_message()
        )
    tt = getattr(emb, "token_type_embeddings", None)
    # RoBERTa-family embeddings number positions from padding_idx + 1 when given inputs_embeds.
    if (
        hasattr(emb, "create_position_ids_from_inputs_embeds")
        and getattr(emb, "padding_idx", None) is not None
    ):
        offset = int(emb.padding_idx) + 1
    else:
        offset = 0
    dropout = getattr(emb, "dropout", None) or nn.Identity()
    return EmbeddingParts(
        word, pos, tt if isinstance(tt, nn.Embedding) else None, ln, dropout, offset
    )


def _base_model(model: nn.Module) -> nn.Module:
    """The bare encoder of a Hugging Face model (BertModel inside BertFor..., etc.)."""
    if hasattr(model, "embeddings") and hasattr(model, "encoder"):
        return model
    base = getattr(model, "base_model", None)
    if base is not None and base is not model:
        return base
    return model


class ClassificationHead(nn.Module):
    """The backbone family's own head, reading slot 0 (the first virtual token).

    roberta: dropout, dense, tanh, dropout, out_proj (XLM-R/RoBERTa's classification head).
    bert: pooler dense, tanh, dropout, classifier; the dense starts from the backbone's pooler.
    """

    def __init__(
        self,
        hidden_size: int,
        num_labels: int,
        dropout: float,
        style: str,
        pooler_dense: nn.Linear | None = None,
    ):
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
        encoder_input_size, num_xpe_tokens, prompt_dropout_scope: the width of the XPE
            table (default d), an explicit split (a loaded adapter's) and the MLP dropout's
            scope ("batch" or "sample"), as in CrossPromptEncoder.
        classifier_dropout: head dropout (default: the backbone's hidden dropout).
        backend: kernels of the fused ops (None = the device's best); "reference" also
            selects the reference route (see set_backend).
        head_style: "roberta" or "bert"; default from the backbone family.
        fast_path: switches of the encoder's fast path (encoder_fast_path.FastPathOptions).
        accelerate: accelerate the backbone in place (opt-in; acceleration.accelerate:
            classes of its linear and dropout layers, its attention implementation, caches
            on its modules); restore_backbone() undoes it.
        route: "fused" or "peft" (default: "peft" with backend "reference", else "fused").

    The backbone is frozen (requires_grad False).
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_labels: int,
        num_virtual_tokens: int = 20,
        encoder_ratio: float = 1.0,
        encoder_hidden_size: int = 256,
        prompt_dropout: float = 0.1,
        classifier_dropout: float | None = None,
        backend: str | None = None,
        head_style: str | None = None,
        fast_path: FastPathOptions | None = None,
        accelerate: bool = False,
        route: str | None = None,
        encoder_input_size: int | None = None,
        num_xpe_tokens: int | None = None,
        prompt_dropout_scope: str = "batch",
    ):
        super().__init__()
        if num_labels < 1:
            raise ValueError(f"num_labels must be >= 1, got {num_labels}")
        backbone = _base_model(backbone)
        self.parts = find_embedding_parts(backbone)
        self.backbone = backbone
        self.backbone.requires_grad_(False)
        self.fast_path = fast_path or FastPathOptions()
        config = backbone.config
        d = self.parts.word.embedding_dim
        max_pos = self.parts.position.num_embeddings
        if self.parts.position_offset + num_virtual_tokens + 1 > max_pos:
            raise ValueError(
                f"a prompt of {num_virtual_tokens} virtual tokens does not fit the backbone's "
                f"position table ({max_pos} rows, first usable position "
                f"{self.parts.position_offset}): at most "
                f"{max_pos - self.parts.position_offset - 1} virtual tokens leave room for one "
                "input token"
            )
        self.prompt = CrossPromptEncoder(
            num_virtual_tokens,
            d,
            encoder_ratio,
            encoder_hidden_size,
            encoder_input_size,
            dropout=prompt_dropout,
            backend=backend,
            num_xpe_tokens=num_xpe_tokens,
            dropout_scope=prompt_dropout_scope,
        )
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
        self.head = ClassificationHead(
            d,
            num_labels,
            classifier_dropout,
            head_style,
            pooler_dense if isinstance(pooler_dense, nn.Linear) else None,
        )
        self.num_labels = num_labels
        self.accelerated = False
        self.set_backend(backend)
        if route is not None:
            self.set_route(route)
        if accelerate:
            self.accelerate_backbone()
        from .backbones import SUPPORTED_FAMILIES

        if getattr(config, "model_type", None) not in SUPPORTED_FAMILIES:
            self._check_matches_reference()

    @torch.no_grad()
    def _check_matches_reference(self) -> None:
        """For a backbone outside the supported families: its logits on a small padded
        input must equal those of the plain Hugging Face route (PEFT's), or it is refused."""
        name = type(self.backbone).__name__
        was_training, backend, route = self.training, self.backend, self.route
        accelerated = self.accelerated
        fork = torch.random.fork_rng(devices=[])
        try:
            with fork:
                torch.manual_seed(0)
                V = self.parts.word.num_embeddings
                L = max(2, min(6, self.max_input_length))
                ids = torch.randint(
                    min(3, V - 1), min(V, 100), (2, L), device=self.parts.word.weight.device
                )
                mask = torch.ones_like(ids)
                mask[1, L // 2 :] = 0
                self.eval()
                fused = self(ids, mask).float()
                self.set_backend("reference")
                ref = self(ids, mask).float()
        except Exception as e:
            raise UnsupportedBackboneError(
                f"{name} ({getattr(self.backbone.config, 'model_type', '?')}) is not supported: "
                f"the fused route fails on it ({e.__class__.__name__}: "
                f"{str(e).splitlines()[0][:160]}); " + _supported_message()
            ) from None
        finally:
            self.set_kernels(backend)
            self.set_route(route)
            if accelerated and not self.accelerated:
                self.accelerate_backbone()
            self.train(was_training)
        err = (fused - ref).abs().max().item()
        if not err <= 1e-4 * max(1.0, ref.abs().max().item()):
            raise UnsupportedBackboneError(
                f"{name} ({getattr(self.backbone.config, 'model_type', '?')}) is not supported: "
                f"its logits differ from the plain Hugging Face route by {err:.1e}; "
                + _supported_message()
            )

    def set_kernels(self, backend: str | None) -> None:
        """The kernels of both fused ops (None = the device's best)."""
        self.backend = backend
        if self.prompt.encoder is not None:
            self.prompt.encoder.backend = backend

    def set_route(self, route: str) -> None:
        if route not in ("fused", "peft"):
            raise ValueError(f"route must be 'fused' or 'peft', got {route!r}")
        self.route = route

    def accelerate_backbone(self) -> None:
        """Accelerates the backbone in place (acceleration.accelerate), and the head's
        dropout (counter-based masks, numbered by global sample index under torchrun)."""
        accelerate(self.backbone, self.head)
        self.accelerated = True

    def restore_backbone(self) -> None:
        """Undoes accelerate_backbone: the backbone is the Hugging Face object again."""
        restore(self.backbone, self.head)
        self.accelerated = False

    def set_backend(self, backend: str | None) -> None:
        """The fused ops' kernels; "reference" is the whole reference route: reference
        kernels, the unmodified Hugging Face model (PEFT's route), the backbone restored."""
        self.set_kernels(backend)
        self.set_route("peft" if backend == "reference" else "fused")
        if backend == "reference" and self.accelerated:
            self.restore_backbone()

    # ---- properties -------------------------------------------------------------------
    @property
    def num_virtual_tokens(self) -> int:
        return self.prompt.num_virtual_tokens

    @property
    def max_input_length(self) -> int:
        """Longest token sequence (with <s> and </s>) that fits the position table."""
        return (
            self.parts.position.num_embeddings
            - self.parts.position_offset
            - self.num_virtual_tokens
        )

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    # ---- forward ----------------------------------------------------------------------
    def _extended_mask(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None):
        B, L = input_ids.shape
        if attention_mask is None:
            attention_mask = torch.ones(B, L, dtype=torch.long, device=input_ids.device)
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)}, "
                f"input_ids {tuple(input_ids.shape)}"
            )
        ones = torch.ones(
            B, self.num_virtual_tokens, dtype=attention_mask.dtype, device=attention_mask.device
        )
        return torch.cat([ones, attention_mask], dim=1)

    def _check_inputs(self, input_ids: torch.Tensor):
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [B, L], got {tuple(input_ids.shape)}")
        if input_ids.shape[1] > self.max_input_length:
            raise ValueError(
                f"inputs of {input_ids.shape[1]} tokens plus {self.num_virtual_tokens} virtual "
                f"tokens exceed the backbone's {self.parts.position.num_embeddings} positions; "
                f"truncate inputs to {self.max_input_length} tokens"
            )

    def embed(self, input_ids: torch.Tensor, prompt: torch.Tensor | None = None) -> torch.Tensor:
        """The embedding stream [B, N + L, d] the encoder stack sees (before dropout)."""
        p = self.parts
        if prompt is None:
            prompt = self.prompt(input_ids.shape[0])
        word = p.word.weight
        prompt = prompt.to(word.dtype)
        if p.token_type is not None:
            type_row = p.token_type.weight[0]
        else:
            type_row = torch.zeros_like(p.layer_norm.weight)
        return ops.assemble_embeddings(
            input_ids,
            prompt,
            word,
            p.position.weight,
            type_row,
            p.layer_norm.weight,
            p.layer_norm.bias,
            p.layer_norm.eps,
            p.position_offset,
            backend=self.backend,
        )

    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        prompt: torch.Tensor | None = None,
        first_row_only: bool = False,
    ) -> torch.Tensor:
        """Final hidden states [B, N + L, d] (with `first_row_only`, possibly only [B, 1, d]:
        the rows the classifier reads)."""
        self._check_inputs(input_ids)
        mask = self._extended_mask(input_ids, attention_mask)
        B = input_ids.shape[0]
        if prompt is None:
            prompt = self.prompt(B)
        if self.route == "peft":
            # Exactly PEFT's route: the unmodified Hugging Face model with inputs_embeds.
            word = self.parts.word(input_ids)
            if prompt.dim() == 2:
                prompt = prompt.unsqueeze(0).expand(B, -1, -1)
            embeds = torch.cat([prompt.to(word.dtype), word], dim=1)
            return self.backbone(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        from transformers.masking_utils import create_bidirectional_mask

        hidden = self.parts.dropout(self.embed(input_ids, prompt))
        fast_attn = attends_fast(self.backbone)
        if fast_attn:
            # Key-padding mask [B, 1, 1, S], additive: what an encoder's bidirectional mask
            # is, without materializing [B, 1, S, S] (see fast_dropout's attention).
            mask4d = torch.zeros(mask.shape, dtype=hidden.dtype, device=hidden.device)
            mask4d = mask4d.masked_fill_(mask == 0, float("-inf"))[:, None, None, :]
        else:
            mask4d = create_bidirectional_mask(
                config=self.backbone.config, inputs_embeds=hidden, attention_mask=mask
            )
        return run_encoder(
            self.backbone.encoder, hidden, mask4d, fast_attn, first_row_only, self.fast_path
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        prompt: torch.Tensor | None = None,
    ):
        """Logits [B, num_labels]; with `labels`, (loss, logits)."""
        hidden = self.encode(input_ids, attention_mask, prompt, first_row_only=True)
        logits = self.head(hidden[:, 0])
        if labels is None:
            return logits
        return F.cross_entropy(logits.float(), labels), logits
