"""Each fused op, forward and forward+backward: the C++ CPU backend against the eager
reference and torch.compile of the eager reference, at the paper's shapes (B=32, L=128, N=20,
d=1024, h=256) and the embedded backbone's (d=384), fp32 and bf16, 1 and 2 threads.

Targets (medians of interleaved runs, recorded as met or missed, not asserted):
assemble_embeddings forward+backward >= 2x torch.compile and within 2x of its lower bound
(torch's gather of the batch's rows into a new [B, N+L, d] tensor: what any implementation
must read and write); prompt_encoder_mlp forward+backward >= 2x eager. (An earlier target of
4x eager for the assembly was withdrawn: the gather alone takes most of that budget.)
"""

import pytest
import torch
from conftest import interleaved, ratio_info, record_targets

from xpe_fast import ops
from xpe_fast.reference import assemble_embeddings_reference, prompt_encoder_mlp_reference

SHAPES = {
    "paper-d1024": dict(B=32, L=128, N=20, d=1024, h=256, V=250002, P=514),
    "e5-d384": dict(B=32, L=128, N=20, d=384, h=256, V=250037, P=512),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
TARGETS = {
    ("assemble", "fwd+bwd"): {"compile": 2.0, "lower_bound": 0.5},
    ("mlp", "fwd+bwd"): {"eager": 2.0},
}
_compiled = {}


def assemble_inputs(s, dtype):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, s["V"], (s["B"], s["L"]), generator=g)
    ids[:, -s["L"] // 3 :] = 1  # real padding
    word = torch.randn(s["V"], s["d"], generator=g).to(dtype)
    pos = torch.randn(s["P"], s["d"], generator=g).to(dtype)
    typ, w, b = (torch.randn(s["d"], generator=g).to(dtype) for _ in range(3))
    prompt = torch.randn(s["N"], s["d"], generator=g).to(dtype).requires_grad_()
    offset = 2 if s["P"] == 514 else 0
    return ids, prompt, word, pos, typ, w, b, 1e-5, offset


def mlp_inputs(s, dtype):
    g = torch.Generator().manual_seed(0)
    d, h = s["d"], s["h"]
    x = torch.randn(s["N"], d, generator=g)
    ws = [
        torch.randn(h, d, generator=g) * d**-0.5,
        torch.zeros(h),
        torch.randn(h, h, generator=g) * h**-0.5,
        torch.zeros(h),
        torch.randn(d, h, generator=g) * h**-0.5,
        torch.zeros(d),
    ]
    return [t.to(dtype).requires_grad_() for t in [x] + ws]


def variants(op, pas, shape, dtype):
    s = SHAPES[shape]
    dt = DTYPES[dtype]
    if op == "assemble":
        args = assemble_inputs(s, dt)
        ids, prompt, *rest = args
        fused = lambda: ops.assemble_embeddings(ids, prompt, *rest, backend="cpu")  # noqa: E731
        eager = lambda: assemble_embeddings_reference(ids, prompt, *rest)  # noqa: E731
        key = ("assemble", shape, dtype)
        if key not in _compiled:
            _compiled[key] = torch.compile(assemble_embeddings_reference, dynamic=False)
        comp = lambda: _compiled[key](ids, prompt, *rest)  # noqa: E731
        grad_of = [prompt]
        # The lower bound: gather one row per output slot (prompt slots included) and write
        # them as a new [B, N+L, d] tensor; no arithmetic, no backward.
        word = rest[0]
        slots = torch.cat([torch.randint(0, word.shape[0], (s["B"], s["N"])), ids], 1).flatten()
        bound = lambda: torch.index_select(word, 0, slots)  # noqa: E731
    else:
        args = mlp_inputs(s, dt)
        fused = lambda: ops.prompt_encoder_mlp(*args, backend="cpu")  # noqa: E731
        eager = lambda: prompt_encoder_mlp_reference(*args)  # noqa: E731
        key = ("mlp", shape, dtype)
        if key not in _compiled:
            _compiled[key] = torch.compile(prompt_encoder_mlp_reference, dynamic=False)
        comp = lambda: _compiled[key](*args)  # noqa: E731
        grad_of = args
    out_shape = fused().shape
    gout = torch.randn(out_shape).to(dt)

    def wrap(f):
        if pas == "fwd":

            def run():
                with torch.no_grad():
                    f()
        else:

            def run():
                torch.autograd.grad(f(), grad_of, gout)

        return run

    fns = {"xpe_fast": wrap(fused), "eager": wrap(eager), "compile": wrap(comp)}
    if op == "assemble":
        fns["lower_bound"] = bound
    return fns


@pytest.mark.parametrize("threads", [1, 2], indirect=True)
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("pas", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("op", ["assemble", "mlp"])
def test_op(benchmark, op, pas, shape, dtype, threads):
    fns = variants(op, pas, shape, dtype)
    stats = interleaved(fns, rounds=15)
    info = ratio_info(stats, "xpe_fast")
    benchmark.extra_info.update(
        {
            "op": op,
            "pass": pas,
            "shape": shape,
            "dtype": dtype,
            "threads": threads,
            **info,
            **{f"median_{k}_ms": 1e3 * v["median"] for k, v in stats.items()},
        }
    )
    benchmark.pedantic(fns["xpe_fast"], rounds=10, iterations=1, warmup_rounds=1)
    record_targets(
        benchmark,
        {
            other: (info[f"speedup_vs_{other}"], target)
            for other, target in TARGETS.get((op, pas), {}).items()
        },
        f"{op} {pas} {shape} {dtype} {threads} thread(s)",
    )
