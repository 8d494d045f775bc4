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


@pytest.mark.parametrize(
    "n,r,n_xpe,ok",
    [(90, 0.7, 62, True), (20, 0.3, 1, True), (20, 0.3, 0, False), (20, 0.3, 20, False),
     (20, 0.0, 0, True), (20, 0.0, 3, False), (20, 1.0, 20, True), (20, 1.0, 19, False)],
)  # fmt: skip
def test_an_explicit_split_is_checked_against_the_method(n, r, n_xpe, ok):
    if ok:
        assert split_virtual_tokens(n, r, n_xpe) == (n - n_xpe, n_xpe)
        enc = CrossPromptEncoder(n, 8, r, 4, num_xpe_tokens=n_xpe)
        assert (enc.num_spt, enc.num_xpe) == (n - n_xpe, n_xpe)
    else:
        with pytest.raises(ValueError, match="num_xpe_tokens"):
            split_virtual_tokens(n, r, n_xpe)


# ---- the prompt MLP's dropout scope --------------------------------------------------------


def per_sample_reference(enc, batch, seed):
    """Each sample's prompt through the eager MLP with its own masks: those of the hash that
    torch.ops.xpe_fast.dropout evaluates, numbered by sample, seeds drawn as the model draws
    them (one per mask from the default generator)."""
    from xpe_fast.reference import prompt_encoder_mlp_reference

    torch.manual_seed(seed)
    n, h, p = enc.num_xpe, enc.encoder_hidden_size, enc.encoder.dropout
    seeds = [int(torch.empty((), dtype=torch.int64).random_()) for _ in range(2)]
    ones = torch.ones(batch, n, h)
    m1, m2 = (torch.ops.xpe_fast.dropout(ones, p, s, 0) for s in seeds)
    mlp = enc.encoder
    w = [mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight, mlp.fc2.bias, mlp.fc3.weight, mlp.fc3.bias]
    rows = []
    for b in range(batch):
        xpe = prompt_encoder_mlp_reference(enc.xpe_embedding, *w, p, True, masks=(m1[b], m2[b]))
        rows.append(torch.cat([enc.spt_embedding, xpe]) if enc.spt_embedding is not None else xpe)
    return torch.stack(rows), (m1, m2)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("r", [0.5, 1.0])
def test_sample_scope_draws_each_samples_own_masks(backend, r):
    from xpe_fast import _extension

    if backend == "cpu" and not _extension.has_cpu_kernels():
        pytest.skip("the C++ extension is not built")
    torch.manual_seed(3)
    enc = CrossPromptEncoder(7, 12, r, 9, dropout=0.3, backend=backend, dropout_scope="sample")
    enc.train()
    want, (m1, _) = per_sample_reference(enc, 5, seed=10)
    torch.manual_seed(10)
    got = enc(5)
    assert got.shape == (5, 7, 12)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert not torch.equal(m1[0], m1[1])  # samples do get different masks
    # every gradient, against autograd through the per-sample reference
    g = torch.randn_like(got)
    params = [p for p in enc.parameters()]
    ours = torch.autograd.grad((got * g).sum(), params)
    theirs = torch.autograd.grad((want * g).sum(), params)
    for a, b, (name, _) in zip(ours, theirs, enc.named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("extension", [True, False], ids=["hash", "no-extension"])
def test_sample_scope_masks_do_not_depend_on_how_the_batch_is_split(monkeypatch, extension):
    """Two ranks (the same generator state, shares of 2 and 4 samples numbered from 0 and 2)
    give one process's six prompts; the generator advances alike whatever the share."""
    from xpe_fast import _extension, fast_dropout

    if not extension:
        monkeypatch.setattr(_extension, "_C", None)
    torch.manual_seed(0)
    enc = CrossPromptEncoder(5, 8, 0.6, 6, dropout=0.4, backend="reference", dropout_scope="sample")
    enc.train()
    with torch.no_grad():
        torch.manual_seed(1)
        whole = enc(6)
        after_whole = torch.rand(())
        shares = []
        for first, size in ((0, 2), (2, 4)):
            torch.manual_seed(1)
            with fast_dropout.global_batch_offset(first):
                shares.append(enc(size))
            assert torch.equal(torch.rand(()), after_whole)
    torch.testing.assert_close(torch.cat(shares), whole, rtol=0, atol=0)


def test_sample_scope_is_one_prompt_outside_training_and_batch_scope_always():
    torch.manual_seed(0)
    sample = CrossPromptEncoder(5, 8, 0.6, 6, dropout=0.4, dropout_scope="sample")
    batch = CrossPromptEncoder(5, 8, 0.6, 6, dropout=0.4)
    batch.load_state_dict(sample.state_dict())
    assert batch.train()(4).shape == (5, 8)
    assert sample.eval()(4).shape == (5, 8)
    torch.testing.assert_close(sample(4), batch.eval()(4), rtol=0, atol=0)
    sample.train().set_dropout(0.0)  # a target language: no dropout, one prompt
    assert sample(4).shape == (5, 8)
    with pytest.raises(ValueError, match="dropout_scope"):
        CrossPromptEncoder(5, 8, 0.6, 6, dropout_scope="token")
