"""Pretraining on one GPU: tokens/s and MFU of a preset (gpu-small) compiled and eager, memory, a profile.

MFU here is against the card's bf16 matrix-product rate measured in the same process
(8192 x 8192 x 8192 products on random data, the mean of 10 after 3 warm-ups), not the
data sheet: the honest ceiling of the card as we found it. Each contender is a real
`ownllm pretrain` run (in this process, so peak memory can be read) on a copy of a prepared
run directory (tokenizer + token shards), with no evaluations, samples or checkpoints
between steps; its metrics.jsonl gives the per-step rate. The first step's extra time over
the median step is the compile (and allocation) cost. One step of the compiled run is
profiled with the PyTorch profiler: the table of the kernels that take the GPU's time, and
a Chrome trace, go to --out.

    python bench/gpu_train.py --run runs/gpu-check --out bench/out/gpu      # on a CUDA machine
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ownllm.cli import main as ownllm  # noqa: E402
from ownllm.model import layers  # noqa: E402
from ownllm.train.trainer import Trainer  # noqa: E402


def previous_rotate_real(pairs: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """The compiled rotary before 2026-12-04 (unbind, then stack), for a same-run comparison."""
    a, b = pairs.unbind(-1)
    cos, sin = rotation.unbind(-1)
    return torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1)


class PreviousRotary:
    def __enter__(self):
        self.current, layers._rotate_real = layers._rotate_real, previous_rotate_real

    def __exit__(self, *exc):
        layers._rotate_real = self.current


def measured_bf16_peak(size: int = 8192, reps: int = 10) -> float:
    a = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        a @ b
    end.record()
    torch.cuda.synchronize()
    return 2 * size**3 * reps / (start.elapsed_time(end) / 1e3)


class StepProfiler:
    """Profiles one chosen training step (wrapping Trainer._train_step while installed)."""

    def __init__(self, step: int, out: Path):
        self.step, self.out, self.table = step, out, ""
        self._original = Trainer._train_step

    def __enter__(self):
        profiler = self

        def train_step(trainer, model):
            if trainer.step + 1 != profiler.step:
                return profiler._original(trainer, model)
            torch.cuda.synchronize()
            with torch.profiler.profile(
                activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
            ) as prof:
                profiler._original(trainer, model)
                torch.cuda.synchronize()
            profiler.table = prof.key_averages().table(
                sort_by="cuda_time_total", row_limit=25, max_name_column_width=70
            )
            trace = profiler.out / "train_step_trace.json"
            prof.export_chrome_trace(str(trace))
            with open(trace, "rb") as src, gzip.open(str(trace) + ".gz", "wb") as dst:
                shutil.copyfileobj(src, dst)
            trace.unlink()
            return None

        Trainer._train_step = train_step
        return self

    def __exit__(self, *exc):
        Trainer._train_step = self._original


def run_pretrain(
    prepared: Path,
    work: Path,
    name: str,
    preset: str,
    seconds: float,
    settings: list[str],
    profile: StepProfiler | None,
) -> dict:
    run = work / name
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    for part in ("tokenizer", "tokens"):
        if (prepared / part).exists():
            shutil.copytree(prepared / part, run / part)
    args = [
        "pretrain",
        "--run",
        str(run),
        "--preset",
        preset,
        "--time-budget",
        f"{seconds:g}s",
        "--set",
        "eval_every=0",
        "--set",
        "sample_every=0",
        "--set",
        "checkpoint_every=0",
        "--set",
        "log_every=1",
        "--set",
        "eval_tokens=65536",
    ]
    for item in settings:
        args += ["--set", item]
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    try:
        if profile is not None:
            with profile:
                ownllm(args)
        else:
            ownllm(args)
    except SystemExit as e:
        if e.code:
            raise RuntimeError(f"ownllm pretrain ({name}) exited with {e.code}") from None
    wall = time.perf_counter() - start
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "tok_per_s" in r and r.get("stage") == "pretrain"]
    start_record = next(r for r in records if r.get("event") == "start")
    rates = [r["tok_per_s"] for r in steps[3:]]  # the first steps pay for compilation and allocation
    step_tokens = steps[0]["tokens"]
    first_step = step_tokens / steps[0]["tok_per_s"]
    median_step = step_tokens / statistics.median(rates)
    shutil.rmtree(run / "checkpoints", ignore_errors=True)
    return {
        "steps": len(steps),
        "wall_s": wall,
        "tok_per_s": statistics.median(rates),
        "best_tok_per_s": max(rates),
        "worst_tok_per_s": min(rates),
        "first_step_s": first_step,
        "median_step_s": median_step,
        "compile_s": first_step - median_step,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
        "flops_per_token": start_record["flops_per_token"],
        "micro_batch": start_record["micro_batch"],
        "grad_accum": start_record["grad_accum"],
        "precision": start_record["precision"],
        "final_loss": steps[-1]["loss"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a prepared run directory (tokenizer/ and tokens/)")
    parser.add_argument("--out", type=Path, required=True, help="where the results, profile and work runs go")
    parser.add_argument("--preset", default="gpu-small")
    parser.add_argument("--compiled-seconds", type=float, default=90, help="time budget of the compiled run")
    parser.add_argument("--eager-seconds", type=float, default=30, help="time budget of the eager run")
    parser.add_argument("--profile-step", type=int, default=12, help="the compiled run's step to profile (0: none)")
    parser.add_argument(
        "--previous-rotary-seconds",
        type=float,
        default=0,
        help="also time a compiled run with the previous rotary kernel for this long (0: no)",
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench/gpu_train.py needs a CUDA GPU")
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.out / "work"

    peak = measured_bf16_peak()
    name = torch.cuda.get_device_name()
    print(
        f"{name}, torch {torch.__version__}, CUDA {torch.version.cuda}; bf16 8192^3 products: "
        f"{peak / 1e12:.0f} TFLOP/s (the MFU denominator)",
        flush=True,
    )
    profile = StepProfiler(args.profile_step, args.out) if args.profile_step else None
    results = {"gpu": name, "torch": torch.__version__, "bf16_peak_flops": peak, "preset": args.preset}
    contenders = [
        ("compiled", args.compiled_seconds, ["compile=true"], profile, None),
        ("eager", args.eager_seconds, ["compile=false"], None, None),
    ]
    if args.previous_rotary_seconds:
        contenders.append(
            ("compiled, previous rotary", args.previous_rotary_seconds, ["compile=true"], None, PreviousRotary())
        )
    for label, seconds, settings, prof, patch in contenders:
        try:
            with patch or contextlib.nullcontext():
                r = run_pretrain(
                    args.run,
                    work,
                    label.replace(", ", "-").replace(" ", "-"),
                    args.preset,
                    seconds,
                    settings + args.overrides,
                    prof,
                )
        except Exception as e:  # report and go on: the other contender's figures still count
            print(f"{label}: FAILED: {type(e).__name__}: {e}", flush=True)
            results[label] = {"error": f"{type(e).__name__}: {e}"}
            continue
        r["mfu_measured_peak"] = r["flops_per_token"] * r["tok_per_s"] / peak
        results[label] = r
        print(
            f"{label}: {r['steps']} steps in {r['wall_s']:.0f} s; median {r['tok_per_s']:,.0f} tok/s "
            f"(best {r['best_tok_per_s']:,.0f}, worst {r['worst_tok_per_s']:,.0f}); MFU {r['mfu_measured_peak']:.1%} "
            f"of the measured peak; step {r['median_step_s'] * 1e3:.0f} ms, first step {r['first_step_s']:.1f} s "
            f"(compile ~{r['compile_s']:.1f} s); peak memory {r['peak_memory_gib']:.1f} GiB; micro_batch "
            f"{r['micro_batch']} x {r['grad_accum']}; {r['precision']}; loss {r['final_loss']:.3f}",
            flush=True,
        )
    if "tok_per_s" in results.get("compiled", {}) and "tok_per_s" in results.get("eager", {}):
        results["compile_speedup"] = results["compiled"]["tok_per_s"] / results["eager"]["tok_per_s"]
        print(f"torch.compile speed-up over eager: {results['compile_speedup']:.2f}x", flush=True)
    previous = results.get("compiled, previous rotary", {})
    if "tok_per_s" in previous and "tok_per_s" in results.get("compiled", {}):
        results["rotary_speedup"] = results["compiled"]["tok_per_s"] / previous["tok_per_s"]
        print(f"compiled, this rotary over the previous one: {results['rotary_speedup']:.3f}x", flush=True)
    if profile is not None and profile.table:
        (args.out / "train_step_profile.txt").write_text(profile.table)
        print(f"profile of step {args.profile_step} (compiled), by GPU time:\n{profile.table}", flush=True)
    shutil.rmtree(work, ignore_errors=True)
    (args.out / "gpu_train.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
