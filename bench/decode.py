"""Generation speed: our engine against Hugging Face `LlamaForCausalLM.generate(use_cache=True)`, same weights.

Both get the `cpu` preset's architecture (vocabulary 8192) and the identical weights (ours
copied into theirs through ownllm.model.hf_compat; the script checks that both produce the
same greedy tokens before timing anything), fp32, the same thread count, greedy decoding
(or --sample: temperature 0.8, top-k 50 for both), and a fixed number of new tokens (no stop
token for ours; min_new_tokens and no eos for theirs). Measured, in interleaved rounds (the
order alternates each round, so a neighbour's burst of load hits both):

  decode b1     new tokens / wall time, one 16-token prompt, --new-tokens new tokens
  decode b8     8 prompts of 16 tokens decoded together (same lengths: HF needs no padding)
  prefill       a 200-token prompt, one new token: prompt tokens / time; that time is the
                time to first token (TTFT)

For each we print the median and best over rounds and the median of the per-round ratios
ours / theirs (the figure to quote: both sides of a ratio saw the same moment's load), by
wall-clock time and by the process's CPU time (on a shared machine the wall clock also
counts the time other processes held the core; CPU time does not, though it still pays for
caches and memory bandwidth shared with them).

    .venv/bin/python bench/decode.py                      # random weights
    .venv/bin/python bench/decode.py --run runs/demo      # a trained checkpoint and its tokenizer
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ownllm.inference.engine import Engine, SamplingParams  # noqa: E402
from ownllm.model import Transformer  # noqa: E402
from ownllm.model.hf_compat import hf_llama_config, to_hf_llama_state_dict  # noqa: E402
from ownllm.tokenizer import Tokenizer  # noqa: E402
from ownllm.train.config import load_config  # noqa: E402

PROMPT_TOKENS, LONG_PROMPT_TOKENS, BATCH = 16, 200, 8


def synthetic_tokenizer(vocab_size: int) -> Tokenizer:
    """A tokenizer of exactly vocab_size ids (merges of byte pairs): the engine decodes every id it samples."""
    pairs = ((bytes([a]), bytes([b])) for a in range(256) for b in range(256))
    merges = [next(pairs) for _ in range(vocab_size - 256 - 16)]
    return Tokenizer(merges)


def build(args) -> tuple[Engine, torch.nn.Module]:
    if args.run:
        engine = Engine.load(args.run, device="cpu", max_slots=BATCH, stop_ids=frozenset())
    else:
        config = load_config("cpu").model
        config.vocab_size = args.vocab
        torch.manual_seed(0)
        engine = Engine(Transformer(config).eval(), synthetic_tokenizer(args.vocab), max_slots=BATCH,
                        stop_ids=frozenset())
    from transformers import LlamaConfig, LlamaForCausalLM

    config = engine.model.config
    hf = LlamaForCausalLM(LlamaConfig(**hf_llama_config(config), attn_implementation="sdpa")).eval()
    hf.load_state_dict(to_hf_llama_state_dict(engine.model.state_dict(), config), strict=not config.tie_embeddings)
    return engine, hf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="use this run's latest checkpoint and tokenizer (default: random weights)")
    parser.add_argument("--vocab", type=int, default=8192, help="vocabulary of the random model (the demo's)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--new-tokens", type=int, default=128, help="tokens generated per decode measurement")
    parser.add_argument("--sample", action="store_true", help="temperature 0.8, top-k 50 instead of greedy")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    engine, hf = build(args)
    config = engine.model.config
    n_new = min(args.new_tokens, config.max_seq_len - PROMPT_TOKENS)
    vocab = engine.tokenizer.vocab_size
    g = torch.Generator().manual_seed(1)
    short = torch.randint(0, vocab - 16, (BATCH, PROMPT_TOKENS), generator=g)
    long = torch.randint(0, vocab - 16, (1, LONG_PROMPT_TOKENS), generator=g)
    sampling = {"temperature": 0.8, "top_k": 50} if args.sample else {"temperature": 0.0}
    hf_sampling = {"do_sample": True, "temperature": 0.8, "top_k": 50} if args.sample else {"do_sample": False}

    def ours(prompts: torch.Tensor, new: int) -> list[list[int]]:
        params = SamplingParams(max_tokens=new, seed=0, **sampling)
        return [c.ids for c in engine.generate_batch(prompts.tolist(), params)]

    def theirs(prompts: torch.Tensor, new: int) -> list[list[int]]:
        with torch.inference_mode():
            out = hf.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=new,
                              min_new_tokens=new, eos_token_id=None, pad_token_id=0, use_cache=True, top_p=None,
                              **hf_sampling)
        return out[:, prompts.shape[1]:].tolist()

    if not args.sample:  # same function, same greedy tokens (a near-tie may flip late; the start must agree)
        a, b = ours(short[:2], 24), theirs(short[:2], 24)
        assert [x[:8] for x in a] == [x[:8] for x in b], f"ours {a} vs HF {b}: the models differ"

    matrices = [p for name, p in engine.model.named_parameters() if p.dim() == 2 and name != "embed.weight"]
    if engine.model.lm_head is None:
        matrices.append(engine.model.embed.weight)

    def floor(prompts: torch.Tensor, new: int) -> None:
        """Only the weight matrix products of `new` single-token steps: what no engine can skip at batch 1."""
        inputs = {w.shape[1]: torch.randn(1, 1, w.shape[1]) for w in matrices}
        with torch.inference_mode():
            for _ in range(new):
                for w in matrices:
                    torch.nn.functional.linear(inputs[w.shape[1]], w)

    scenarios = {
        "decode b1": (short[:1], n_new, n_new),
        f"decode b{BATCH}": (short, n_new, BATCH * n_new),
        "prefill": (long, 1, LONG_PROMPT_TOKENS),
    }
    contenders = {"ownllm": ours, "HF": theirs}
    import transformers

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {platform.processor() or platform.machine()}, "
          f"{args.threads} threads; load average at start {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print(f"model: {config.n_layers} layers x {config.d_model}, {config.n_heads} heads, vocab {config.vocab_size}, "
          f"{engine.model.num_params():,} parameters, {'weights of ' + str(args.run) if args.run else 'random weights'}, "
          f"fp32; {'sampling (T=0.8, top-k 50)' if args.sample else 'greedy'}; {n_new} new tokens per decode")
    for name, fn in contenders.items():  # warm-up
        for prompts, new, _ in scenarios.values():
            fn(prompts, min(new, 8))

    rates = {(s, c): [] for s in scenarios for c in contenders}
    cpu_rates = {(s, c): [] for s in scenarios for c in contenders}
    ttft = {c: [] for c in contenders}
    floor_rates: list[tuple[float, float]] = []  # (wall, CPU) tokens/s of the matrix products alone
    for r in range(args.rounds):
        for scenario, (prompts, new, tokens) in scenarios.items():
            order = list(contenders) if r % 2 == 0 else list(contenders)[::-1]
            for name in order:
                start, cpu_start = time.perf_counter(), time.process_time()
                contenders[name](prompts, new)
                seconds = time.perf_counter() - start
                rates[scenario, name].append(tokens / seconds)
                cpu_rates[scenario, name].append(tokens / (time.process_time() - cpu_start))
                if scenario == "prefill":
                    ttft[name].append(seconds)
            if scenario == "decode b1":
                start, cpu_start = time.perf_counter(), time.process_time()
                floor(prompts, new)
                floor_rates.append((tokens / (time.perf_counter() - start), tokens / (time.process_time() - cpu_start)))
        print(f"round {r + 1}: " + "; ".join(
            f"{s} " + " / ".join(f"{rates[s, c][-1]:,.0f}" for c in contenders) for s in scenarios), flush=True)

    for clock, table in (("wall-clock", rates), ("CPU-time", cpu_rates)):
        print(f"\n{clock + ' tok/s':<20}{'ownllm median':>14}{'best':>9}{'HF median':>12}{'best':>9}"
              f"{'ratio (median of rounds)':>27}")
        for s in scenarios:
            mine, hfs = table[s, "ownllm"], table[s, "HF"]
            paired = [x / y for x, y in zip(mine, hfs)]
            print(f"{s:<20}{statistics.median(mine):>14,.0f}{max(mine):>9,.0f}{statistics.median(hfs):>12,.0f}"
                  f"{max(hfs):>9,.0f}{statistics.median(paired):>14.2f}x (range {min(paired):.2f}-{max(paired):.2f})")
    wall_floor = statistics.median(w for w, _ in floor_rates)
    cpu_floor = statistics.median(c for _, c in floor_rates)
    print(f"\nfloor at batch 1 (the {len(matrices)} weight matrix-vector products per token, nothing else): "
          f"{wall_floor:,.0f} tok/s wall, {cpu_floor:,.0f} tok/s CPU time; an engine with no other cost would be "
          f"{wall_floor / statistics.median(rates['decode b1', 'HF']):.2f}x (wall) / "
          f"{cpu_floor / statistics.median(cpu_rates['decode b1', 'HF']):.2f}x (CPU) HF's median here")
    print(f"time to first token, {LONG_PROMPT_TOKENS}-token prompt: ownllm {statistics.median(ttft['ownllm']) * 1e3:.1f} ms "
          f"(best {min(ttft['ownllm']) * 1e3:.1f}), HF {statistics.median(ttft['HF']) * 1e3:.1f} ms "
          f"(best {min(ttft['HF']) * 1e3:.1f}); load average at end {os.getloadavg()[0]:.2f}")
    engine.close()


if __name__ == "__main__":
    main()
