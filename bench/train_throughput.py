"""Training throughput: our transformer against Hugging Face's LlamaForCausalLM, same everything.

Both models get the identical architecture (the `cpu` preset's, vocabulary 8192 by default)
and the identical weights (ours copied into theirs; the script checks that both give the
same logits), the same batch of token ids, fp32, the same thread count and the same
optimizer (ownllm's AdamW: fused, decay on matrices). One timed step is a full training
step: forward, loss, backward, gradient clipping, optimizer step. Contenders run in
alternating order, many short rounds; we report for each the median and the best tokens/s
(the best is the least disturbed by other processes on a shared machine), the median of the
per-round ratios, and MFU against the fp32 matrix-product ceiling measured here.

Hugging Face computes its loss with its own code path (labels=inputs, shifted inside the
model: T-1 predictions per row against our T), which if anything favours it slightly.

    .venv/bin/python bench/train_throughput.py                  # eager vs eager
    .venv/bin/python bench/train_throughput.py --compile        # adds torch.compile of both
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ownllm.core.device import cpu_peak_flops, measure_matmul_flops  # noqa: E402
from ownllm.model import Transformer  # noqa: E402
from ownllm.model.hf_compat import hf_llama_config, to_hf_llama_state_dict  # noqa: E402
from ownllm.train.config import load_config  # noqa: E402
from ownllm.train.optim import build_optimizer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--vocab", type=int, default=8192, help="vocabulary size (the demo tokenizer's)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per contender per round")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd versions of both")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = load_config(args.preset, args.overrides)
    config.model.vocab_size = args.vocab
    B, T, V = config.micro_batch, config.seq_len, args.vocab

    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM

    ours = Transformer(config.model)
    hf = LlamaForCausalLM(LlamaConfig(**hf_llama_config(config.model), attn_implementation="sdpa"))
    hf.load_state_dict(to_hf_llama_state_dict(ours.state_dict(), config.model), strict=not config.model.tie_embeddings)
    tokens = torch.randint(0, V, (B, T + 1))
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    with torch.no_grad():
        logit_diff = (ours(inputs) - hf(input_ids=inputs).logits).abs().max().item()
    assert ours.num_params() == hf.num_parameters(), "parameter counts differ"
    assert logit_diff < 1e-3, f"the two models disagree (max logit difference {logit_diff})"

    def ours_step(model, opt):
        loss = model(inputs, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)

    def hf_step(model, opt):
        loss = model(input_ids=inputs, labels=inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)

    device = torch.device("cpu")
    contenders = {
        "ownllm (eager)": (ours, ours_step),
        "HF Llama (eager)": (hf, hf_step),
    }
    if args.compile:
        contenders["ownllm (compiled)"] = (torch.compile(ours), ours_step)
        contenders["HF Llama (compiled)"] = (torch.compile(hf), hf_step)
    optimizers = {
        name: build_optimizer(model, 1e-4, 0.1, (0.9, 0.95), device) for name, (model, _) in contenders.items()
    }

    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"{platform.processor() or platform.machine()}, "
        f"{args.threads} threads (machine shared with other processes)",
        flush=True,
    )
    print(
        f"model: {args.preset} preset, {config.model.n_layers} layers x {config.model.d_model}, "
        f"{config.model.n_heads} heads, vocab {V}, {ours.num_params():,} parameters; "
        f"batch {B} x {T} = {B * T} tokens, fp32; max logit difference ours vs HF {logit_diff:.1e}",
        flush=True,
    )

    for name, (model, step) in contenders.items():  # warm-up (and compilation)
        start = time.perf_counter()
        for _ in range(2):
            step(model, optimizers[name])
        print(f"warm-up {name}: {time.perf_counter() - start:.1f} s", flush=True)

    rates: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for r in range(args.rounds):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            model, step = contenders[name]
            start = time.perf_counter()
            for _ in range(args.steps):
                step(model, optimizers[name])
            rates[name].append(args.steps * B * T / (time.perf_counter() - start))
        print(f"round {r + 1}: " + ", ".join(f"{n} {rates[n][-1]:,.0f} tok/s" for n in names), flush=True)

    ceiling = cpu_peak_flops(torch.float32)
    ceiling_all_threads = max(measure_matmul_flops(device, torch.float32, size=s) for s in (256, 512, 1024))
    flops_per_token = ours.flops_per_token(T)
    print(
        f"\nfp32 matmul ceiling: {ceiling / 1e9:.0f} GFLOP/s (best single-core 256^3 product x {args.threads}); "
        f"measured with all threads at once: {ceiling_all_threads / 1e9:.0f} GFLOP/s"
    )
    print(f"model FLOPs per token (forward + backward): {flops_per_token / 1e6:.1f} M\n")
    results = {}
    print(f"{'contender':<22}{'median tok/s':>14}{'MFU':>7}{'best tok/s':>12}{'MFU':>7}{'worst':>8}")
    for name in names:
        median, best = statistics.median(rates[name]), max(rates[name])
        mfu, best_mfu = median * flops_per_token / ceiling, best * flops_per_token / ceiling
        results[name] = {
            "median_tok_per_s": median,
            "best_tok_per_s": best,
            "all_tok_per_s": rates[name],
            "mfu": mfu,
            "best_mfu": best_mfu,
        }
        print(f"{name:<22}{median:>14,.0f}{mfu:>7.1%}{best:>12,.0f}{best_mfu:>7.1%}{min(rates[name]):>8,.0f}")
    print()
    pairs = [("ownllm (eager)", "HF Llama (eager)")]
    if args.compile:
        pairs += [("ownllm (compiled)", "HF Llama (compiled)"), ("ownllm (compiled)", "HF Llama (eager)")]
    for a, b in pairs:
        paired = [x / y for x, y in zip(rates[a], rates[b])]
        ratio = statistics.median(rates[a]) / statistics.median(rates[b])
        best_ratio = max(rates[a]) / max(rates[b])
        results[f"{a} / {b}"] = {
            "ratio_of_medians": ratio,
            "median_round_ratio": statistics.median(paired),
            "ratio_of_bests": best_ratio,
        }
        print(
            f"{a} / {b}: {statistics.median(paired):.2f}x median of per-round ratios (range {min(paired):.2f}-"
            f"{max(paired):.2f}); {ratio:.2f}x ratio of medians; {best_ratio:.2f}x ratio of bests"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "args": vars(args) | {"json": str(args.json)},
                    "ceiling_flops": ceiling,
                    "flops_per_token": flops_per_token,
                    "results": results,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
