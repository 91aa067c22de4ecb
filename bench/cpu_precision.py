"""Training-step speed on this CPU in fp32 and in bf16 autocast: why fp32 is the CPU default.

One timed step is a full training step of ownllm's model (forward, fused output-layer loss,
backward, clipping, AdamW) for a preset's model and micro-batch. The two precisions run in
alternating order over many short rounds; we report each one's median and best tokens/s and
the median of the per-round ratios bf16 / fp32, plus the raw matrix-product rates of both
dtypes (the number the old automatic choice timed at start-up, for 128 x 128 products).

    .venv/bin/python bench/cpu_precision.py                   # cpu and tiny presets, 2 threads
    .venv/bin/python bench/cpu_precision.py --preset cpu --rounds 12
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ownllm.core.device import measure_matmul_flops  # noqa: E402
from ownllm.model import Transformer  # noqa: E402
from ownllm.train.config import load_config  # noqa: E402
from ownllm.train.optim import build_optimizer  # noqa: E402


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def time_preset(preset: str, vocab: int, rounds: int, steps: int) -> None:
    config = load_config(preset, [])
    config.model.vocab_size = vocab
    B, T = config.micro_batch, config.seq_len
    torch.manual_seed(0)
    model = Transformer(config.model)
    opt = build_optimizer(model, 1e-4, 0.1, (0.9, 0.95), torch.device("cpu"))
    tokens = torch.randint(0, vocab, (B, T + 1))
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    modes = {"fp32": contextlib.nullcontext, "bf16": lambda: torch.autocast("cpu", dtype=torch.bfloat16)}

    def step(mode: str) -> None:
        with modes[mode]():
            loss = model(inputs, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for mode in modes:  # warm-up
        step(mode)
    rates: dict[str, list[float]] = {m: [] for m in modes}
    for r in range(rounds):
        for mode in list(modes) if r % 2 == 0 else list(modes)[::-1]:
            start = time.perf_counter()
            for _ in range(steps):
                step(mode)
            rates[mode].append(steps * B * T / (time.perf_counter() - start))
    ratios = [b / f for b, f in zip(rates["bf16"], rates["fp32"])]
    print(
        f"{preset} preset ({config.model.n_layers} x {config.model.d_model}, vocab {vocab}, batch {B} x {T}, "
        f"{model.num_params():,} parameters):"
    )
    for mode in modes:
        print(f"  {mode}: median {statistics.median(rates[mode]):,.0f} tok/s, best {max(rates[mode]):,.0f}")
    print(
        f"  bf16 / fp32: {statistics.median(ratios):.2f}x median of {rounds} per-round ratios "
        f"(range {min(ratios):.2f}-{max(ratios):.2f})",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", action="append", help="preset(s) to time (default: cpu and tiny)")
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per precision per round")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {cpu_name()}, {args.threads} threads", flush=True)
    for size in (128, 512):
        fp32 = measure_matmul_flops(torch.device("cpu"), torch.float32, size=size)
        bf16 = measure_matmul_flops(torch.device("cpu"), torch.bfloat16, size=size)
        print(
            f"matrix products {size}^3: fp32 {fp32 / 1e9:.0f} GFLOP/s, bf16 {bf16 / 1e9:.0f} GFLOP/s "
            f"({bf16 / fp32:.2f}x)",
            flush=True,
        )
    for preset in args.preset or ["cpu", "tiny"]:
        time_preset(preset, args.vocab, args.rounds, args.steps)


if __name__ == "__main__":
    main()
