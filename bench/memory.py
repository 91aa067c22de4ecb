"""Peak memory and step time of a training step with and without gradient checkpointing.

Each variant runs in a fresh Python process, so that one variant's freed memory (which the
allocator keeps) never counts for the next, `--rounds` times, the variants alternating (the
step time is the median over all rounds; the machine may be shared): the process builds the model and AdamW, runs
warm-up steps and timed steps (forward, loss, backward, clipping, optimizer step) on random
tokens, and reports the peak resident memory the kernel recorded for it (ru_maxrss) and the
resident memory before the model existed (Python + PyTorch). The parent also samples the
child's resident memory with psutil every 10 ms as a cross-check. Next to each figure: the
trainer's estimate (train/memory.py), which `micro_batch=auto` and the memory check rely on.

The default model is big enough for activations to dominate on a CPU and small enough for a step
in seconds: 6 layers x 384, 512 tokens of context, 8 rows per micro-batch, vocabulary 8192
(~17M parameters; weights, gradients and AdamW's moments ~270 MB; activations ~700 MB).

    .venv/bin/python bench/memory.py                        # CPU, fp32
    .venv/bin/python bench/memory.py --set micro_batch=4 --steps 2
    .venv/bin/python bench/memory.py --device cuda          # peak from torch.cuda.max_memory_allocated
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

MODEL = [
    "model.n_layers=6",
    "model.d_model=384",
    "model.n_heads=6",
    "model.max_seq_len=512",
    "seq_len=512",
    "micro_batch=8",
    "batch_tokens=4096",
]
VARIANTS = {"plain": [], "grad_checkpointing": ["grad_checkpointing=true"]}


def child(args) -> None:
    """One variant, in this fresh process; prints one JSON line."""
    import torch

    from ownllm.core.device import choose_precision, resolve_device
    from ownllm.model import Transformer
    from ownllm.train.config import load_config
    from ownllm.train.memory import training_bytes
    from ownllm.train.optim import build_optimizer

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    baseline = psutil.Process().memory_info().rss
    config = load_config("cpu", MODEL + args.overrides + VARIANTS[args.child])
    config.model.vocab_size = args.vocab
    precision = choose_precision(device, args.dtype)
    torch.manual_seed(0)
    model = Transformer(config.model).to(device)
    model.grad_checkpointing = config.grad_checkpointing
    optimizer = build_optimizer(model, 1e-4, 0.1, (0.9, 0.95), device)
    tokens = torch.randint(0, args.vocab, (config.micro_batch, config.seq_len + 1), device=device)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]

    def step():
        with precision.autocast():
            loss = model(inputs, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    n_params = model.num_params()
    result = {
        "variant": args.child,
        "params": n_params,
        "tokens_per_step": config.micro_batch * config.seq_len,
        "step_seconds": times,
        "baseline_rss": baseline,
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # Linux reports KiB
        "estimate": training_bytes(
            config.model, n_params, config.micro_batch, config.seq_len, config.grad_checkpointing
        ),
        "precision": precision.describe(),
    }
    if device.type == "cuda":
        result["cuda_peak_allocated"] = torch.cuda.max_memory_allocated()
    print(json.dumps(result), flush=True)


def run_variant(name: str, args) -> dict:
    command = [
        sys.executable,
        __file__,
        "--child",
        name,
        "--threads",
        str(args.threads),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--vocab",
        str(args.vocab),
        "--device",
        args.device,
        "--dtype",
        args.dtype,
    ]
    for item in args.overrides:
        command += ["--set", item]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    watched, sampled = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            sampled = max(sampled, watched.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.01)
    out, _ = proc.communicate()
    if proc.returncode != 0:
        sys.exit(f"variant {name} failed with status {proc.returncode}")
    return {**json.loads(out.strip().splitlines()[-1]), "sampled_peak_rss": sampled}


def mib(size: int) -> str:
    return f"{size / 2**20:,.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant and round")
    parser.add_argument("--rounds", type=int, default=2, help="fresh processes per variant, alternating")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change the model or batch, e.g. --set micro_batch=4",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--child", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    print(
        f"{platform.processor() or platform.machine()}, {args.threads} threads, device {args.device}; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores",
        flush=True,
    )
    results = {}
    for round_ in range(args.rounds):
        for name in VARIANTS if round_ % 2 == 0 else list(VARIANTS)[::-1]:
            r = run_variant(name, args)
            print(
                f"round {round_ + 1}, {name}: peak RSS {mib(r['peak_rss'])} MiB, steps "
                + ", ".join(f"{t:.2f}" for t in r["step_seconds"])
                + " s",
                flush=True,
            )
            if name not in results:
                results[name] = r
            else:  # the worst peak and every step time
                seen = results[name]
                seen["step_seconds"] += r["step_seconds"]
                for key in ("peak_rss", "sampled_peak_rss", "cuda_peak_allocated"):
                    if key in r:
                        seen[key] = max(seen[key], r[key])
    first = next(iter(results.values()))
    print(f"{first['precision']}")
    print(
        f"\nmodel: {first['params'] / 1e6:.1f}M parameters; {first['tokens_per_step']} tokens per step; "
        f"Python + PyTorch before the model: {first['baseline_rss'] / 2**20:,.0f} MiB"
    )
    print(
        f"{'variant':<20}{'peak RSS MiB':>14}{'sampled':>9}{'above base':>12}{'estimate':>10}"
        f"{'step s (median)':>17}{'tok/s':>8}"
    )
    for name, r in results.items():
        median = statistics.median(r["step_seconds"])
        print(
            f"{name:<20}{mib(r['peak_rss']):>14}{mib(r['sampled_peak_rss']):>9}"
            f"{mib(r['peak_rss'] - r['baseline_rss']):>12}{mib(r['estimate']):>10}{median:>17.2f}"
            f"{r['tokens_per_step'] / median:>8,.0f}"
            + (f"   CUDA peak allocated {mib(r['cuda_peak_allocated'])} MiB" if "cuda_peak_allocated" in r else "")
        )
    plain, saved = results["plain"], results["grad_checkpointing"]
    ratio = (saved["peak_rss"] - saved["baseline_rss"]) / (plain["peak_rss"] - plain["baseline_rss"])
    slower = statistics.median(saved["step_seconds"]) / statistics.median(plain["step_seconds"])
    print(f"\ngradient checkpointing: {ratio:.0%} of the training memory above the base, {slower:.2f}x the step time")
    if args.json:
        args.json.write_text(
            json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=2)
        )


if __name__ == "__main__":
    main()
