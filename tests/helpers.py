"""Shared test helpers: tolerances per dtype, random inputs with real padding, tiny backbones."""

import torch

# Relative tolerances per dtype (compared to the largest magnitude of the expected tensor).
TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 2e-2}


def assert_close(actual, expected, dtype=None, msg=""):
    dtype = dtype or expected.dtype
    tol = TOL[dtype]
    a, e = actual.double(), expected.double()
    scale = max(e.abs().max().item(), 1.0) if e.numel() else 1.0
    err = (a - e).abs().max().item() if e.numel() else 0.0
    assert err <= tol * scale, f"{msg} max abs err {err:.3e} > {tol:.1e} * {scale:.3e}"


def padded_ids(B, L, V, pad_id=1, low=3):
    """Random ids in [low, V) with real padding: sample i keeps a random length >= 1."""
    ids = torch.randint(low, V, (B, L))
    mask = torch.ones(B, L, dtype=torch.long)
    for i in range(B):
        n = int(torch.randint(1, L + 1, ()).item()) if i else L  # sample 0 is full length
        ids[i, n:] = pad_id
        mask[i, n:] = 0
    return ids, mask


def tiny_config(kind, vocab=211, hidden=24, layers=2, heads=4, ffn=37, max_pos=80, dropout=0.0):
    import transformers as T

    cls = {"xlmr": T.XLMRobertaConfig, "bert": T.BertConfig}[kind]
    return cls(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=ffn,
        max_position_embeddings=max_pos,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        pad_token_id=1,
    )


def tiny_backbone(kind, **kw):
    import transformers as T

    cls = {"xlmr": T.XLMRobertaModel, "bert": T.BertModel}[kind]
    torch.manual_seed(1234)
    return cls(tiny_config(kind, **kw)).eval()


def assert_close_or_better(actual, expected, exact, dtype, msg=""):
    """Within tolerance of the eager reference `expected`, or at least as close as it is to
    `exact` (the reference run in float64). The second arm matters where the reference itself
    is noisy: a LayerNorm over d = 1 has a zero gradient that float32 autograd gets as
    rounding noise amplified by 1/sqrt(eps)."""
    tol = TOL[dtype]
    a, e, x = actual.double(), expected.double(), exact.double()
    scale = max(e.abs().max().item(), 1.0) if e.numel() else 1.0
    err = (a - e).abs().max().item() if e.numel() else 0.0
    if err <= tol * scale:
        return
    err_exact = (a - x).abs().max().item()
    ref_err = (e - x).abs().max().item()
    assert err_exact <= ref_err + tol * scale, (
        f"{msg} max abs err {err:.3e} vs reference, {err_exact:.3e} vs float64 "
        f"(reference's own: {ref_err:.3e}), tolerance {tol:.1e} * {scale:.3e}"
    )
