"""dropout: the C++ kernel, the Triton kernel (interpreted here, the CUDA kernel on a GPU) and
the reference draw the same masks bit for bit, for every dtype, odd sizes and offsets past
2^32; a mask depends only on (seed, element index), so a tensor's tail numbered from its
offset is the whole tensor's tail; the public function's backward is the mask."""

import pytest
import torch
from conftest import requires_triton
from hypothesis import given, settings
from hypothesis import strategies as st

from xpe_fast import ops
from xpe_fast.reference import dropout_reference

DTYPES = [torch.float32, torch.float64, torch.bfloat16]
OFFSETS = [0, 7, (1 << 32) - 5, 3 << 33]


def kernel(x, p, seed, offset=0):
    return torch.ops.xpe_fast.dropout(x, p, seed, offset)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("offset", OFFSETS)
@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.9])
def test_reference_equals_the_cpu_kernel_bit_for_bit(dtype, offset, p):
    torch.manual_seed(0)
    x = torch.randn(3, 1031).to(dtype)
    for seed in (0, 1, 2**63 - 1, -(2**40) - 3):
        torch.testing.assert_close(
            dropout_reference(x, p, seed, offset), kernel(x, p, seed, offset), rtol=0, atol=0
        )


@requires_triton
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("offset", OFFSETS)
def test_triton_kernel_equals_the_cpu_kernel_bit_for_bit(dtype, offset):
    from xpe_fast.ops.triton_dropout import dropout as triton_dropout

    torch.manual_seed(1)
    x = torch.randn(5, 413).to(dtype)  # not a multiple of the block
    for p, seed in ((0.1, 12345), (0.37, 2**62 + 11), (0.0, 5)):
        torch.testing.assert_close(
            triton_dropout(x, p, seed, offset), kernel(x, p, seed, offset), rtol=0, atol=0
        )


@pytest.mark.parametrize(
    "backend", ["cpu", "reference", pytest.param("triton", marks=requires_triton)]
)
def test_public_function_and_its_gradient(backend):
    torch.manual_seed(2)
    x = torch.randn(4, 7, 33, dtype=torch.float64, requires_grad=True)
    y = ops.dropout(x, 0.25, seed=99, offset=5, backend=backend)
    want = kernel(x.detach(), 0.25, 99, 5)
    torch.testing.assert_close(y, want, rtol=0, atol=0)
    g = torch.randn_like(x)
    (gx,) = torch.autograd.grad(y, x, g)
    mask = kernel(torch.ones_like(x), 0.25, 99, 5)  # 0 or 1 / (1 - p)
    torch.testing.assert_close(gx, g * mask, rtol=0, atol=0)
    ops.dropout(x, 0.25, 99, backend="cpu")  # the C++ kernel back for the CPU key


def test_a_tail_numbered_from_its_offset_is_the_whole_tensors_tail():
    """A rank's share of a global batch draws what a one-process run draws for it."""
    x = torch.randn(9, 6, 5)
    whole = kernel(x, 0.3, 7)
    for first in (1, 4, 8):
        share = kernel(x[first:], 0.3, 7, first * 6 * 5)
        torch.testing.assert_close(share, whole[first:], rtol=0, atol=0)


def test_keep_rate_and_scale():
    y = kernel(torch.ones(200_000), 0.3, 3)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.7) < 0.005
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / 0.7), rtol=0, atol=1e-7)


@pytest.mark.parametrize(
    "args,err",
    [((1.0, 0, 0), ValueError), ((-0.1, 0, 0), ValueError), ((0.1, 0, -1), ValueError)],
)
def test_bad_arguments_are_clear_errors(args, err):
    with pytest.raises(err):
        ops.dropout(torch.ones(3), *args)
    with pytest.raises(TypeError):
        ops.dropout(torch.ones(3, dtype=torch.int64), 0.1, 0)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 3000),
    p=st.floats(0.0, 0.95),
    seed=st.integers(-(2**63), 2**63 - 1),
    offset=st.integers(0, 2**40),
    dtype=st.sampled_from(DTYPES),
)
def test_fuzz_reference_against_the_kernel(n, p, seed, offset, dtype):
    x = torch.randn(n).to(dtype)
    torch.testing.assert_close(
        dropout_reference(x, p, seed, offset), kernel(x, p, seed, offset), rtol=0, atol=0
    )
