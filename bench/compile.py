"""What torch.compile buys: training steps, and inference (prefill and one-token decode), eager against compiled.

The same model (the `cpu` preset's shape, vocabulary 8192, by default), the same weights and
the same inputs for both. Training: a full step (forward, loss, backward, clipping, AdamW).
Inference, in eval mode without gradients: prefill = the logits of the last position of a
batch of prompts; decode = one new token for each row against a KV cache already holding
`--context` positions (the step generation repeats for every token). Contenders alternate in
many short rounds; the median and the best of the rounds are reported (the best is the least
disturbed by other processes on a shared machine), with the time compilation took.

    .venv/bin/python bench/compile.py                     # CPU, fp32
    .venv/bin/python bench/compile.py --device cuda       # bf16 autocast on a GPU
    .venv/bin/python bench/compile.py --set model.n_layers=6 --rounds 5
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ownllm.core.device import choose_precision, resolve_device  # noqa: E402
from ownllm.model import Transformer  # noqa: E402
from ownllm.model.kv_cache import KVCache  # noqa: E402
from ownllm.train.config import load_config  # noqa: E402
from ownllm.train.optim import build_optimizer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per contender per round")
    parser.add_argument("--prompts", type=int, default=8, help="rows for prefill and decode")
    parser.add_argument("--context", type=int, default=128, help="positions in the cache when decoding")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    precision = choose_precision(device, args.dtype)
    config = load_config(args.preset, args.overrides)
    config.model.vocab_size = args.vocab
    B, T, V = config.micro_batch, config.seq_len, args.vocab
    torch.manual_seed(0)
    eager = Transformer(config.model).to(device)
    compiled_model = copy.deepcopy(eager)
    compiled = torch.compile(compiled_model)
    tokens = torch.randint(0, V, (B, T + 1), device=device)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    prompts = torch.randint(0, V, (args.prompts, T), device=device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    optimizers = {id(m): build_optimizer(m, 1e-4, 0.1, (0.9, 0.95), device) for m in (eager, compiled_model)}

    def train_step(model, weights):
        weights.train()
        with precision.autocast():
            loss = model(inputs, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(weights.parameters(), 1.0, foreach=True)
        optimizers[id(weights)].step()
        optimizers[id(weights)].zero_grad(set_to_none=True)

    @torch.no_grad()
    def prefill(model, weights):
        weights.eval()
        with precision.autocast():
            model(prompts, last_only=True)

    caches = {}

    @torch.no_grad()
    def decode(model, weights):
        """One token per row at position `context`: the same shapes every call, as in steady generation."""
        weights.eval()
        if id(weights) not in caches:
            cache = KVCache(config.model, args.prompts, device=device)
            with precision.autocast():
                model(
                    prompts[:, : args.context],
                    cache=cache.view(list(range(args.prompts)), [0] * args.prompts, args.context),
                )
            caches[id(weights)] = (cache, cache.view(list(range(args.prompts)), [args.context] * args.prompts, 1))
        _, view = caches[id(weights)]
        with precision.autocast():
            model(prompts[:, :1], cache=view)

    work = {
        "training step": (train_step, B * T),
        "prefill": (prefill, args.prompts * T),
        "decode (1 token/row)": (decode, args.prompts),
    }
    contenders = {"eager": (eager, eager), "compiled": (compiled, compiled_model)}

    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {args.threads} threads, "
        f"{precision.describe()}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores",
        flush=True,
    )
    print(
        f"model: {config.model.n_layers} layers x {config.model.d_model}, vocab {V}, {eager.num_params():,} "
        f"parameters; training batch {B} x {T}; prefill {args.prompts} x {T}; decode {args.prompts} rows at "
        f"position {args.context}",
        flush=True,
    )
    results = {}
    for what, (fn, tokens_per_call) in work.items():
        warmup = {}
        for name, (model, weights) in contenders.items():
            start = time.perf_counter()
            for _ in range(2):  # the first call of the compiled model compiles
                fn(model, weights)
            sync()
            warmup[name] = time.perf_counter() - start
        rates = {name: [] for name in contenders}
        for r in range(args.rounds):
            for name in contenders if r % 2 == 0 else reversed(list(contenders)):
                model, weights = contenders[name]
                start = time.perf_counter()
                for _ in range(args.repeats):
                    fn(model, weights)
                sync()
                rates[name].append(args.repeats * tokens_per_call / (time.perf_counter() - start))
        paired = [c / e for c, e in zip(rates["compiled"], rates["eager"])]
        results[what] = {
            "rates": rates,
            "warmup_seconds": warmup,
            "speedup_median_round": statistics.median(paired),
            "speedup_of_bests": max(rates["compiled"]) / max(rates["eager"]),
        }
        print(
            f"\n{what}: tokens/s median (best) -- eager {statistics.median(rates['eager']):,.0f} "
            f"({max(rates['eager']):,.0f}), compiled {statistics.median(rates['compiled']):,.0f} "
            f"({max(rates['compiled']):,.0f}); speed-up {statistics.median(paired):.2f}x (median of per-round "
            f"ratios, range {min(paired):.2f}-{max(paired):.2f}), {results[what]['speedup_of_bests']:.2f}x of bests; "
            f"first two calls {warmup['eager']:.1f} s eager, {warmup['compiled']:.1f} s compiled",
            flush=True,
        )
    if args.json:
        args.json.write_text(
            json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=2)
        )


if __name__ == "__main__":
    main()
