"""Every compiled variant of the CPU kernels (AVX-512 with and without the bf16 GEMMs, AVX2,
baseline: csrc/cpu/clones.h)
against the eager reference. The variant is chosen once per process, so each level runs in a
subprocess with XPE_FAST_CPU_ISA set; levels the CPU lacks fall back to the best it has."""

import os
import subprocess
import sys
import textwrap

import pytest

from xpe_fast import _extension

SCRIPT = textwrap.dedent("""
    import torch
    torch.set_num_threads(1)
    from xpe_fast import ops, _extension
    from xpe_fast.reference import assemble_embeddings_reference, prompt_encoder_mlp_reference
    TOL = {torch.float32: 1e-5, torch.float64: 1e-10, torch.bfloat16: 2e-2}
    def mix32(x):
        x ^= x >> 16; x = x * 0x7FEB352D & 0xFFFFFFFF; x ^= x >> 15
        x = x * 0x846CA68B & 0xFFFFFFFF; return x ^ (x >> 16)
    def keep_spec(seed, first, n, p):
        t, out = int(p * 16777216.0 + 0.5), []
        for i in range(first, first + n):
            a = mix32((i ^ seed) & 0xFFFFFFFF)
            out.append(mix32((a + (i >> 32) * 0x9E3779B9 + (seed >> 32)) & 0xFFFFFFFF) >> 8 >= t)
        return out
    g = torch.Generator().manual_seed(0)
    for dt in TOL:
        for B, L, N, d in [(3, 13, 7, 127), (2, 5, 20, 384), (1, 1, 1, 3)]:
            ids = torch.randint(0, 50, (B, L), generator=g)
            word, pos = torch.randn(50, d, generator=g).to(dt), torch.randn(40, d, generator=g).to(dt)
            typ, w, b = (torch.randn(d, generator=g).to(dt) for _ in range(3))
            for prompt in (torch.randn(N, d, generator=g), torch.randn(B, N, d, generator=g)):
                p1 = prompt.to(dt).requires_grad_()
                p2 = prompt.to(dt).requires_grad_()
                out = ops.assemble_embeddings(ids, p1, word, pos, typ, w, b, 1e-5, 2, backend="cpu")
                ref = assemble_embeddings_reference(ids, p2, word, pos, typ, w, b, 1e-5, 2)
                torch.testing.assert_close(out.double(), ref.double(), rtol=TOL[dt], atol=TOL[dt] * 4)
                go = torch.randn(out.shape, generator=g).to(dt)
                (g1,) = torch.autograd.grad(out, p1, go)
                (g2,) = torch.autograd.grad(ref, p2, go)
                torch.testing.assert_close(g1.double(), g2.double(), rtol=TOL[dt] * 10,
                                           atol=TOL[dt] * 10 * max(1.0, g2.abs().max().item()))
        x = torch.randn(7, 33, generator=g).to(dt)
        ws = [torch.randn(19, 33, generator=g) / 6, torch.randn(19, generator=g),
              torch.randn(19, 19, generator=g) / 4, torch.randn(19, generator=g),
              torch.randn(33, 19, generator=g) / 4, torch.randn(33, generator=g)]
        ws = [t.to(dt) for t in ws]
        out = ops.prompt_encoder_mlp(x, *ws, backend="cpu")
        ref = prompt_encoder_mlp_reference(x, *ws)
        torch.testing.assert_close(out.double(), ref.double(), rtol=TOL[dt] * 2, atol=TOL[dt] * 4)
        y = torch.ops.xpe_fast.dropout(torch.ones(1 << 16, dtype=dt), 0.25, 7)
        assert abs((y != 0).double().mean().item() - 0.75) < 0.01
        # the hash of kernel_math.h at every level, across a 2^32 boundary of the index
        y2 = torch.ops.xpe_fast.dropout(torch.ones(999, dtype=dt), 0.3, 2**40 + 7, 2**32 - 500)
        assert [v != 0 for v in y2.tolist()] == keep_spec(2**40 + 7, 2**32 - 500, 999, 0.3)
    from xpe_fast.reference import packed_attention_reference, residual_layer_norm_reference
    for dt in (torch.float32, torch.bfloat16):
        for B, S, H, hd in [(2, 37, 3, 32), (1, 5, 2, 64), (2, 3, 1, 16), (1, 9, 1, 128)]:
            qkv = torch.randn(B, S, 3 * H * hd, generator=g).to(dt)
            km = torch.zeros(B, S)
            km[-1, S // 2 + 1:] = float("-inf")
            out = ops.packed_attention(qkv, km, H, hd ** -0.5)
            ref = packed_attention_reference(qkv, km, H, hd ** -0.5)
            torch.testing.assert_close(out.double(), ref.double(), rtol=TOL[dt], atol=TOL[dt])
        for xd, rd in [(torch.bfloat16, torch.float32), (torch.float32, torch.float32),
                       (torch.bfloat16, torch.bfloat16)]:
            x, r = torch.randn(3, 7, 45, generator=g).to(xd), torch.randn(3, 7, 45, generator=g).to(rd)
            w, b = torch.randn(45, generator=g), torch.randn(45, generator=g)
            y, _ = ops.residual_layer_norm(x, r, w, b, 1e-5)
            yr, _ = residual_layer_norm_reference(x, r, w, b, 1e-5)
            torch.testing.assert_close(y.double(), yr.double(), rtol=TOL[y.dtype], atol=TOL[y.dtype] * 4)
    C = _extension._C
    for M, K, N in [(20, 203, 145), (3, 5, 7)]:
        a, w, h = torch.randn(M, K, generator=g), torch.randn(N, K, generator=g), torch.randn(M, N, generator=g)
        for out, ref in ((C.skinny_gemm_nt(a, w), a @ w.t()), (C.skinny_gemm_nn(a, w.t().contiguous()), a @ w.t()),
                         (C.skinny_gemm_tn(a, h), a.t() @ h)):
            torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
        a, w, h = a.bfloat16(), w.bfloat16(), h.bfloat16()
        A, Wd, Hd = a.double(), w.double(), h.double()
        for out, ref in ((C.skinny_gemm_nt(a, w), A @ Wd.t()),
                         (C.skinny_gemm_nn(a, w.t().contiguous()), A @ Wd.t()),
                         (C.skinny_gemm_tn(a, h), A.t() @ Hd)):
            torch.testing.assert_close(out.double(), ref, rtol=1e-2,
                                       atol=1e-2 * ref.abs().max().item())
    print("ok", C.cpu_isa_level())
""")


@pytest.mark.skipif(_extension._C is None, reason="the C++ extension is not built")
@pytest.mark.parametrize("isa", ["avx512bf16", "avx512", "avx2", "baseline"])
def test_every_isa_variant_matches_the_reference(isa):
    env = {**os.environ, "XPE_FAST_CPU_ISA": isa, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0 and r.stdout.strip().split()[-2] == "ok", r.stderr[-3000:]
    level = int(r.stdout.split()[-1])
    assert level <= {"avx512bf16": 3, "avx512": 2, "avx2": 1, "baseline": 0}[isa]


STATS_SCRIPT = textwrap.dedent("""
    import hashlib, torch
    torch.set_num_threads(1)
    from xpe_fast import _extension
    g = torch.Generator().manual_seed(3)
    h = hashlib.sha256()
    for d in (384, 127, 16):
        for tx, tr in ((torch.float32, torch.float32), (torch.bfloat16, torch.float32),
                       (torch.bfloat16, torch.bfloat16)):
            x, r = torch.randn(9, d, generator=g).to(tx), torch.randn(9, d, generator=g).to(tr)
            w, b = torch.randn(d, generator=g), torch.randn(d, generator=g)
            for y in torch.ops.xpe_fast.residual_layer_norm(x, r, w, b, 1e-5, True):
                h.update(y.view(torch.uint8 if y.dtype == torch.float32 else torch.int16)
                         .numpy().tobytes())
    print(_extension._C.cpu_isa_level(), h.hexdigest())
""")


@pytest.mark.skipif(_extension._C is None, reason="the C++ extension is not built")
def test_residual_layer_norm_gives_the_same_bits_at_every_isa_level():
    """Its row statistics use the register width of each level in the same summation order."""
    digests = {}
    for isa in ("avx512", "avx2", "baseline"):
        env = {**os.environ, "XPE_FAST_CPU_ISA": isa, "OMP_NUM_THREADS": "1"}
        r = subprocess.run(
            [sys.executable, "-c", STATS_SCRIPT], env=env, capture_output=True, text=True
        )
        assert r.returncode == 0, r.stderr[-3000:]
        level, digest = r.stdout.split()
        digests[int(level)] = digest
    assert len(set(digests.values())) == 1, digests
