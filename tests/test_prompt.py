import math

import pytest
import torch

from xpe_fast import CrossPromptEncoder, split_virtual_tokens


@pytest.mark.parametrize(
    "n,r,expected",
    [
        (20, 0.0, (20, 0)),
        (20, 1.0, (0, 20)),
        (20, 0.3, (14, 6)),
        (20, 0.7, (6, 14)),
        (20, 0.01, (19, 1)),
        (20, 0.99, (1, 19)),
        (2, 0.5, (1, 1)),
        (1, 0.0, (1, 0)),
        (1, 1.0, (0, 1)),
        (100, 0.29, (71, 29)),
    ],
)
def test_split(n, r, expected):
    assert split_virtual_tokens(n, r) == expected


@pytest.mark.parametrize(
    "n,r", [(0, 1.0), (-3, 0.0), (20, -0.1), (20, 1.5), (20, math.nan), (1, 0.5)]
)
def test_split_rejects_bad_configuration(n, r):
    with pytest.raises(ValueError):
        split_virtual_tokens(n, r)


def test_split_rejects_non_int():
    with pytest.raises(TypeError):
        split_virtual_tokens(2.5, 1.0)


@pytest.mark.parametrize(
    "r,method,spt,xpe",
    [(0.0, "spt", 20, 0), (1.0, "xpe", 0, 20), (0.3, "dual", 14, 6), (0.7, "dual", 6, 14)],
)
def test_tables_sized_to_their_own_parts(r, method, spt, xpe):
    p = CrossPromptEncoder(20, 48, r, encoder_hidden_size=16)
    assert p.method == method
    assert (p.spt_embedding.shape[0] if p.spt_embedding is not None else 0) == spt
    assert (p.xpe_embedding.shape[0] if p.xpe_embedding is not None else 0) == xpe
    out = p()
    assert out.shape == (20, 48)


def test_spt_rows_first_then_encoded_xpe_rows():
    p = CrossPromptEncoder(10, 32, 0.3, encoder_hidden_size=8, dropout=0.0).eval()
    out = p()
    torch.testing.assert_close(out[:7], p.spt_embedding.detach(), rtol=0, atol=0)
    e = p.encoder
    x = p.xpe_embedding
    ref = e.fc3(torch.relu(e.fc2(torch.relu(e.fc1(x)))))
    torch.testing.assert_close(out[7:], ref, rtol=1e-6, atol=1e-6)


def test_tables_start_as_standard_normal():
    torch.manual_seed(0)
    p = CrossPromptEncoder(200, 256, 0.5, encoder_hidden_size=8)
    for t in (p.spt_embedding, p.xpe_embedding):
        assert abs(t.mean().item()) < 0.02 and abs(t.std().item() - 1.0) < 0.02


def test_dropout_only_in_training_and_settable():
    p = CrossPromptEncoder(20, 32, 1.0, encoder_hidden_size=64, dropout=0.5)
    p.eval()
    a, b = p(), p()
    torch.testing.assert_close(a, b)
    p.train()
    assert not torch.equal(p(), p())
    p.set_dropout(0.0)
    torch.testing.assert_close(p(), a)


def test_prompt_gets_gradients_everywhere():
    p = CrossPromptEncoder(6, 16, 0.5, encoder_hidden_size=8, dropout=0.0)
    p().square().sum().backward()
    for name, t in p.named_parameters():
        assert t.grad is not None and t.grad.abs().sum() > 0, name
