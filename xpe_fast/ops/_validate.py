"""Argument checks of the Python-side backends (reference, triton), worded like the C++ ones."""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16)


def _tensor(t, name):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")


def _same(t, name, ref, ref_name="the prompt"):
    _tensor(t, name)
    if t.device != ref.device:
        raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}")
    if t.dtype != ref.dtype:
        raise TypeError(f"{name} must have dtype {ref.dtype} ({ref_name}'s dtype), got {t.dtype}")


def check_assemble_inputs(input_ids, prompt, word, pos, typ, ln_w, ln_b, eps, offset):
    _tensor(prompt, "prompt")
    _tensor(input_ids, "input_ids")
    if prompt.dtype not in FLOAT_DTYPES:
        raise TypeError(f"prompt must be float32, float64 or bfloat16, got {prompt.dtype}")
    if input_ids.dtype != torch.int64:
        raise TypeError(f"input_ids must be int64, got {input_ids.dtype}")
    if input_ids.device != prompt.device:
        raise ValueError(f"input_ids is on {input_ids.device} but the prompt is on {prompt.device}")
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [B, L], got {tuple(input_ids.shape)}")
    B, L = input_ids.shape
    if B == 0:
        raise ValueError("input_ids is an empty batch (B = 0)")
    if L == 0:
        raise ValueError("input_ids has no tokens (L = 0)")
    if prompt.dim() not in (2, 3):
        raise ValueError(f"prompt must be [N, d] or [B, N, d], got {tuple(prompt.shape)}")
    if prompt.dim() == 3 and prompt.shape[0] != B:
        raise ValueError(f"prompt has batch size {prompt.shape[0]} but input_ids has {B}")
    N, d = prompt.shape[-2:]
    if N == 0:
        raise ValueError("prompt has no rows (N = 0)")
    for t, name in ((word, "word_embeddings"), (pos, "position_embeddings")):
        _same(t, name, prompt)
        if t.dim() != 2 or t.shape[1] != d:
            raise ValueError(f"{name} must be [rows, d] with d = {d}, got {tuple(t.shape)}")
    for t, name in ((typ, "token_type_embedding"), (ln_w, "ln_weight"), (ln_b, "ln_bias")):
        _same(t, name, prompt)
        if t.dim() != 1 or t.shape[0] != d:
            raise ValueError(f"{name} must be [d] with d = {d}, got {tuple(t.shape)}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    if offset < 0:
        raise ValueError(f"position_offset must be >= 0, got {offset}")
    if offset + N + L > pos.shape[0]:
        raise ValueError(
            f"position_embeddings has {pos.shape[0]} rows but position_offset + N + L "
            f"= {offset} + {N} + {L} positions are needed"
        )
    V = word.shape[0]
    lo, hi = torch.aminmax(input_ids)
    if int(lo) < 0 or int(hi) >= V:
        bad = int(lo) if int(lo) < 0 else int(hi)
        raise IndexError(f"input_ids contains id {bad}, outside [0, {V}) of word_embeddings")


def check_mlp_inputs(x, w1, b1, w2, b2, w3, b3):
    _tensor(x, "x")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"x must be float32, float64 or bfloat16, got {x.dtype}")
    if x.dim() != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"x must be a non-empty [N, d_in], got {tuple(x.shape)}")
    fan_in = x.shape[1]
    for i, (w, b) in enumerate(((w1, b1), (w2, b2), (w3, b3)), start=1):
        _same(w, f"w{i}", x, "x")
        _same(b, f"b{i}", x, "x")
        if w.dim() != 2 or w.shape[1] != fan_in:
            raise ValueError(f"w{i} must be [out, {fan_in}], got {tuple(w.shape)}")
        if b.dim() != 1 or b.shape[0] != w.shape[0]:
            raise ValueError(f"b{i} must be [{w.shape[0]}], got {tuple(b.shape)}")
        fan_in = w.shape[0]
    if w2.shape[0] != w1.shape[0]:
        raise ValueError(f"w2 must be [h, h] with h = {w1.shape[0]}, got {tuple(w2.shape)}")
