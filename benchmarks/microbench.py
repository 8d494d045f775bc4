"""Micro-measurements behind the design notes (not asserted; medians of standalone calls):

- dropout: the counter-based kernel (`torch.ops.xpe_fast.dropout`) against torch's F.dropout;
- the CPU kernels at each ISA level (XPE_FAST_CPU_ISA, one subprocess per level);
- assemble_embeddings forward and forward+backward standalone, and forward with cold caches
  for random ids against all-equal ids (what the scattered word-table gathers cost); the
  forward right after the eager reference's forward+backward (as in the interleaved
  benchmark), with and without the batch's word rows gathered just before, and in the same
  state the backward kernel alone and torch's index_select of the same word rows; the fixed
  cost of a call (fwd+bwd through autograd on tiny inputs);
- the frozen backbone's GEMM on MKL (torch.mm) against oneDNN, at an encoder shape;
- attention: ops.packed_attention (from the packed QKV projection, context in the output
  projection's layout) against SDPA's CPU flash kernel and matmul + softmax, each with the
  transposes it needs, by sequence length (the matmul + softmax figures swing 2-4x with the
  allocator's state, i.e. with what ran before in the process; profile_model.py compares the
  routes inside the evaluation pass);
- residual add + LayerNorm + bf16 copy (ops.residual_layer_norm) against eager;
- the prompt-encoder MLP's few-row GEMMs (`_C.skinny_gemm_nt/nn/tn`: fp32 AVX-512 loops,
  bf16 AVX512-BF16 loops) against torch's (MKL for fp32, oneDNN for bf16), at the paper's
  MLP shapes (N = 20 rows, d = 1024, h = 256).

    python benchmarks/microbench.py [--threads 1]
"""

import argparse
import os
import subprocess
import sys
import time

import torch
import torch.nn.functional as F


def median_ms(f, rounds=15, before=None):
    for _ in range(2):
        f()
    ts = []
    for _ in range(rounds):
        if before is not None:
            before()
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return 1e3 * sorted(ts)[len(ts) // 2]


def dropout_rows(C):
    for dt in (torch.float32, torch.bfloat16):
        x = torch.randn(32, 12, 84, 84).to(dt)
        ours = median_ms(lambda: torch.ops.xpe_fast.dropout(x, 0.1, 123))
        ref = median_ms(lambda: F.dropout(x, 0.1))
        print(f"| dropout [32,12,84,84] {str(dt)[6:]} | {ours:.3f} | F.dropout {ref:.3f} |")


def assemble_call_overhead(ops, C):
    """Fixed cost per call on tiny inputs: fwd+bwd through ops (autograd) against the two
    ops called without autograd."""
    ids = torch.randint(3, 1000, (2, 7))
    word, pos = torch.randn(1000, 384), torch.randn(514, 384)
    typ, w, b = (torch.randn(384) for _ in range(3))
    prompt = torch.randn(3, 384).requires_grad_()
    pd, gout = prompt.detach(), torch.randn(2, 10, 384)

    def through_ops():
        torch.autograd.grad(
            ops.assemble_embeddings(ids, prompt, word, pos, typ, w, b, 1e-5, 2, backend="cpu"),
            [prompt],
            gout,
        )

    def direct():  # the two ops without autograd
        torch.ops.xpe_fast.assemble_embeddings(ids, pd, word, pos, typ, w, b, 1e-5, 2)
        torch.ops.xpe_fast.assemble_embeddings_backward(gout, pd, pos, typ, w, 1e-5, 2, 7)

    print(
        f"| assemble call overhead, fwd+bwd on tiny inputs (us) | "
        f"{1e3 * median_ms(through_ops, rounds=301):.1f} through ops | "
        f"kernels called directly {1e3 * median_ms(direct, rounds=301):.1f} |"
    )


def assemble_rows(ops, C):
    from xpe_fast.reference import assemble_embeddings_reference

    assemble_call_overhead(ops, C)
    junk = torch.empty(64 * 2**20 // 4)  # 64 MB written between calls: cold caches
    for d, V in ((384, 250037), (1024, 250002)):
        for dt in (torch.float32, torch.bfloat16):
            B, L, N = 32, 128, 20
            word = torch.randn(V, d).to(dt)
            pos = torch.randn(514, d).to(dt)
            typ, w, b = (torch.randn(d).to(dt) for _ in range(3))
            prompt = torch.randn(N, d).to(dt).requires_grad_()
            ids = torch.randint(3, V, (B, L))
            ids[:, -L // 3 :] = 1
            same = torch.full((B, L), 5)
            gout = torch.randn(B, N + L, d).to(dt)

            def fwd(i):
                with torch.no_grad():
                    return ops.assemble_embeddings(
                        i, prompt, word, pos, typ, w, b, 1e-5, 2, backend="cpu"
                    )

            def fwd_bwd():
                out = ops.assemble_embeddings(
                    ids, prompt, word, pos, typ, w, b, 1e-5, 2, backend="cpu"
                )
                torch.autograd.grad(out, [prompt], gout)

            cold = lambda: junk.fill_(1.0)  # noqa: E731
            # As in the interleaved benchmark: right after the eager reference's fwd+bwd; then
            # the same with the batch's word rows gathered just before (what the cold word-row
            # gathers cost), and right after another call of the op itself.
            flat = ids.flatten()

            def eager_fwd_bwd():
                torch.autograd.grad(
                    assemble_embeddings_reference(ids, prompt, word, pos, typ, w, b, 1e-5, 2),
                    [prompt],
                    gout,
                )

            after = [
                median_ms(lambda: fwd(ids), before=f)
                for f in (
                    eager_fwd_bwd,
                    lambda: (eager_fwd_bwd(), word.index_select(0, flat)),
                    lambda: (eager_fwd_bwd(), fwd(ids)),
                )
            ]
            print(
                f"| assemble d={d} {str(dt)[6:]} fwd after eager fwd+bwd | {after[0]:.3f} | "
                f"word rows gathered first {after[1]:.3f}, op run first {after[2]:.3f} |"
            )
            # What else runs cold there: the backward kernel alone, and torch's index_select
            # of the same word rows (a floor for any forward that gathers them), beside the
            # eager reference's own fwd+bwd.
            pd = prompt.detach()
            bwd_after = median_ms(
                lambda: C.assemble_embeddings_backward(gout, pd, pos, typ, w, 1e-5, 2, L),
                before=eager_fwd_bwd,
            )
            isel_after = median_ms(lambda: word.index_select(0, flat), before=eager_fwd_bwd)
            print(
                f"| assemble d={d} {str(dt)[6:]} after eager fwd+bwd "
                f"({median_ms(eager_fwd_bwd):.3f}): bwd kernel | {bwd_after:.3f} | "
                f"index_select of the word rows {isel_after:.3f} |"
            )
            print(
                f"| assemble d={d} {str(dt)[6:]} | fwd {median_ms(lambda: fwd(ids)):.3f}, "
                f"fwd+bwd {median_ms(fwd_bwd):.3f} | cold fwd: random ids "
                f"{median_ms(lambda: fwd(ids), before=cold):.3f}, equal ids "
                f"{median_ms(lambda: fwd(same), before=cold):.3f} |"
            )


def gemm_rows():
    M = 32 * 80
    for o, i in ((384, 384), (1536, 384)):
        for dt in (torch.float32, torch.bfloat16):
            x, w = torch.randn(M, i).to(dt), torch.randn(o, i).to(dt)
            fl = 2 * M * o * i / 1e9
            mkl = fl / median_ms(lambda: torch.mm(x, w.t())) * 1e3
            dnn = (
                fl
                / median_ms(lambda: torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], ""))
                * 1e3
            )
            print(
                f"| GEMM [{M}x{i}] x [{i}x{o}] {str(dt)[6:]} | oneDNN {dnn:.0f} GFLOP/s | "
                f"torch.mm {mkl:.0f} GFLOP/s |"
            )


def attention_rows(ops):
    B, H, hd = 64, 12, 32
    for S in (30, 50, 70, 120):
        qkv = torch.randn(B, S, 3 * H * hd).to(torch.bfloat16)
        keep = torch.ones(B, 1, 1, S, dtype=torch.bool)
        keep[..., -S // 6 :] = False
        add = torch.zeros(B, 1, 1, S).masked_fill(~keep, float("-inf"))
        key_mask = add[:, 0, 0, :].contiguous()

        def split():
            return qkv.view(B, S, 3, H, hd).permute(2, 0, 3, 1, 4)

        def merge(ctx):
            return ctx.transpose(1, 2).reshape(B, S, H * hd)

        def manual():
            q, k, v = split()
            s = torch.matmul(q, k.transpose(-1, -2)).float().mul_(hd**-0.5).add_(add)
            return merge(torch.matmul(torch.softmax(s, -1).to(v.dtype), v))

        def flash():
            q, k, v = split()
            return merge(F.scaled_dot_product_attention(q, k, v, attn_mask=keep.expand(B, 1, S, S)))

        with torch.no_grad():
            ours = median_ms(lambda: ops.packed_attention(qkv, key_mask, H, hd**-0.5), rounds=7)
            print(
                f"| attention bf16 B=64 H=12 S={S} | packed {ours:.2f} | "
                f"flash {median_ms(flash, rounds=7):.2f}, "
                f"matmul+softmax {median_ms(manual, rounds=7):.2f} |"
            )


def residual_layer_norm_rows(ops):
    x = torch.randn(64, 70, 384).to(torch.bfloat16)
    r, w, b = torch.randn(64, 70, 384), torch.randn(384), torch.randn(384)

    def eager():
        y = F.layer_norm(x + r, (384,), w, b, 1e-12)
        return y, y.to(torch.bfloat16)

    ours = median_ms(lambda: ops.residual_layer_norm(x, r, w, b, 1e-12, bf16_copy=True))
    print(
        f"| residual add + LayerNorm + bf16 copy [64,70,384] | {ours:.3f} | "
        f"eager {median_ms(eager):.3f} |"
    )


def isa_rows():
    code = (
        "import torch, time; torch.set_num_threads(1); import xpe_fast;"
        "x = torch.randn(32, 12, 84, 84); f = lambda: torch.ops.xpe_fast.dropout(x, 0.1, 1);"
        "f(); t = time.perf_counter(); [f() for _ in range(20)];"
        "print(f'{(time.perf_counter() - t) / 20 * 1e3:.3f}')"
    )
    for isa in ("avx512", "avx2", "baseline"):
        r = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            env={**os.environ, "XPE_FAST_CPU_ISA": isa},
        )
        print(
            f"| dropout fp32 at XPE_FAST_CPU_ISA={isa} | {r.stdout.strip() or r.stderr[-200:]} | |"
        )


def skinny_gemm_rows(C):
    M = 20
    for K, N in ((1024, 256), (256, 1024)):
        for dt in (torch.float32, torch.bfloat16):
            a, w = torch.randn(M, K).to(dt), torch.randn(N, K).to(dt)
            b, h = torch.randn(K, N).to(dt), torch.randn(M, N).to(dt)
            fl = 2 * M * K * N / 1e6  # MFLOP: / ms = GFLOP/s
            ours = [
                fl / median_ms(f, rounds=51)
                for f in (
                    lambda: C.skinny_gemm_nt(a, w),
                    lambda: C.skinny_gemm_nn(a, b),
                    lambda: C.skinny_gemm_tn(a, h),
                )
            ]
            ref = [
                fl / median_ms(f, rounds=51)
                for f in (lambda: a @ w.t(), lambda: a @ b, lambda: a.t() @ h)
            ]
            print(
                f"| MLP GEMMs, M={M} K={K} N={N} {str(dt)[6:]}: x W^T, g W, g^T h | "
                f"{ours[0]:.0f}, {ours[1]:.0f}, {ours[2]:.0f} GFLOP/s | "
                f"torch {ref[0]:.0f}, {ref[1]:.0f}, {ref[2]:.0f} GFLOP/s |"
            )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from xpe_fast import _extension, ops

    print(f"threads {args.threads}, torch {torch.__version__}; times in ms\n")
    print("| what | xpe_fast | other |\n|---|---|---|")
    dropout_rows(_extension._C)
    isa_rows()
    assemble_rows(ops, _extension._C)
    gemm_rows()
    attention_rows(ops)
    residual_layer_norm_rows(ops)
    skinny_gemm_rows(_extension._C)


if __name__ == "__main__":
    main()
