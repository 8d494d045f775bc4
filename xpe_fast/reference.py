"""Eager PyTorch references of every op xpe_fast implements in kernels: the two fused ops
(assemble_embeddings, prompt_encoder_mlp with its dropout masks) and the two inference helpers
(packed_attention, residual_layer_norm).

Tests and benchmarks both import these, so the fused kernels are always compared
against the same definition. They are plain autograd code: slow, obviously right.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dropout_masks(n: int, h: int, p: float, device, dtype=torch.float32):
    """The two dropout keep-masks of the prompt-encoder MLP, already scaled by 1/(1-p).

    Every backend draws its masks through this function, from torch's default CPU generator
    whatever the device (then moved there), so a fused op and the reference, and a CUDA run
    and a CPU run, see identical masks under the same seed.
    """
    if p <= 0.0:
        return None, None
    if p >= 1.0:
        z = torch.zeros(n, h, device=device, dtype=dtype)
        return z, z.clone()
    keep = 1.0 - p
    m1 = torch.empty(n, h, dtype=torch.float32).bernoulli_(keep).div_(keep)
    m2 = torch.empty(n, h, dtype=torch.float32).bernoulli_(keep).div_(keep)
    return m1.to(device=device, dtype=dtype), m2.to(device=device, dtype=dtype)


def prompt_encoder_mlp_reference(
    x, w1, b1, w2, b2, w3, b3, dropout_p: float = 0.0, training: bool = False, masks=None
):
    """Linear -> ReLU -> Dropout -> Linear -> ReLU -> Dropout -> Linear, per row of x [N, d_in].

    Weights use nn.Linear's [out, in] layout. `masks` (two scaled keep-masks [N, h]) may be
    given explicitly; otherwise they are drawn with `dropout_masks` when training.
    """
    h1 = F.relu(F.linear(x, w1, b1))
    if training and dropout_p > 0.0:
        if masks is None:
            masks = dropout_masks(x.shape[0], w1.shape[0], dropout_p, x.device, x.dtype)
        h1 = h1 * masks[0].to(h1.dtype)
    h2 = F.relu(F.linear(h1, w2, b2))
    if training and dropout_p > 0.0:
        h2 = h2 * masks[1].to(h2.dtype)
    return F.linear(h2, w3, b3)


def assemble_embeddings_reference(
    input_ids,
    prompt,
    word_embeddings,
    position_embeddings,
    token_type_embedding,
    ln_weight,
    ln_bias,
    eps: float,
    position_offset: int,
):
    """LayerNorm(cat(prompt, word_embeddings[input_ids]) + positions + token type 0).

    input_ids [B, L]; prompt [N, d] (shared by the batch) or [B, N, d]; returns [B, N+L, d].
    Slot j (prompt rows included) uses position row `position_offset + j`, as a Hugging Face
    encoder does when it is given `inputs_embeds` (XLM-R: offset padding_idx + 1 = 2; BERT: 0).
    """
    B, L = input_ids.shape
    if prompt.dim() == 2:
        prompt = prompt.unsqueeze(0).expand(B, -1, -1)
    N = prompt.shape[1]
    tokens = F.embedding(input_ids, word_embeddings)
    x = torch.cat([prompt.to(tokens.dtype), tokens], dim=1)
    pos = position_embeddings[position_offset : position_offset + N + L]
    x = x + pos.unsqueeze(0) + token_type_embedding
    return F.layer_norm(x, (x.shape[-1],), ln_weight, ln_bias, eps)


# ---- inference-only helpers of the encoder (CPU kernels in csrc/cpu/) ------------------


def packed_attention_reference(qkv, key_mask, num_heads: int, scale: float):
    """Self-attention from a packed projection qkv [B, S, 3 * H * hd] (query, key, value
    blocks, each [H, hd]) with an additive key mask [B, S] (or None): the context
    [B, S, H * hd] in qkv's dtype, computed in fp32 (float64 for float64). A query whose
    keys are all masked gets zeros."""
    B, S, row = qkv.shape
    hd = row // (3 * num_heads)
    acc = torch.float64 if qkv.dtype == torch.float64 else torch.float32
    q, k, v = qkv.to(acc).view(B, S, 3, num_heads, hd).permute(2, 0, 3, 1, 4)
    scores = (q * scale) @ k.transpose(-1, -2)
    if key_mask is not None:
        scores = scores + key_mask.to(acc)[:, None, None, :]
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    return (probs @ v).transpose(1, 2).reshape(B, S, num_heads * hd).to(qkv.dtype)


def residual_layer_norm_reference(x, residual, weight, bias, eps: float, bf16_copy: bool = False):
    """(LayerNorm(x + residual), its bf16 copy or None): the add in the promoted dtype, the
    LayerNorm in fp32 and returned in that dtype, as eager PyTorch under bf16 autocast."""
    s = x + residual
    y = F.layer_norm(s.float(), (s.shape[-1],), weight.float(), bias.float(), eps).to(s.dtype)
    return y, (y.to(torch.bfloat16) if bf16_copy else None)


def _mul32(v: torch.Tensor, c: int) -> torch.Tensor:
    """(v * c) mod 2^32 for int64 tensors holding uint32 values, in 16-bit halves of c so
    that no product overflows int64."""
    return (v * (c & 0xFFFF) + (((v * (c >> 16)) & 0xFFFF) << 16)) & 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """kernel_math.h's mix32 (lowbias32) on int64 tensors holding uint32 values."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def dropout_reference(x: torch.Tensor, p: float, seed: int, offset: int = 0) -> torch.Tensor:
    """torch.ops.xpe_fast.dropout in plain tensor arithmetic: element i (numbered from
    `offset`) is kept when the 24 bits of kernel_math.h's dropout_bits(seed, offset + i) are
    at or above round(p * 2^24), and scaled by float32(1 / (1 - p)) in the accumulation type
    (float32 for bfloat16 and float32, float64 for float64)."""
    m = 0xFFFFFFFF
    s = int(seed) & 0xFFFFFFFFFFFFFFFF
    i = torch.arange(x.numel(), dtype=torch.int64, device=x.device) + int(offset)
    a = _mix32((i & m) ^ (s & m))
    bits = _mix32((a + _mul32(i >> 32, 0x9E3779B9) + (s >> 32)) & m) >> 8
    keep = bits >= int(p * 16777216.0 + 0.5)
    scale = torch.tensor(1.0 / (1.0 - p), dtype=torch.float32, device=x.device)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    y = x.reshape(-1).to(acc) * torch.where(keep, scale, 0.0).to(acc)
    return y.to(x.dtype).reshape(x.shape)
