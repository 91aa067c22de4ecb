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
    python bench/decode.py --device cuda --preset gpu-small --batches 1,8,64   # on a GPU, bf16

With --llama-cpp (and --run), llama.cpp joins on the same weights exported to GGUF (`ownllm
export --format gguf`, f32 and q8_0; llama-cpp-python, built from source), the same thread
count: one sequence at a time (its b8 figure is 8 sequences one after another, which is what a
llama.cpp user gets from one context), greedy tokens checked against ours before timing. Its
weight repacking for special CPU kernels is off unless --llama-repack: on this Xeon its AMX
repacking of q8_0 weights made llama_decode crash on the demo model.

On CUDA the engine is timed twice, decoding from CUDA graphs (its default) and plain (one
PyTorch call per step), both against HF `generate()` on the same bf16 weights; the script
also reports whether the two engines' greedy tokens are identical.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ownllm.inference.engine import DECODE_MODES, Engine, SamplingParams  # noqa: E402
from ownllm.model import Transformer  # noqa: E402
from ownllm.model.hf_compat import hf_llama_config, to_hf_llama_state_dict  # noqa: E402
from ownllm.tokenizer import Tokenizer  # noqa: E402
from ownllm.train.config import load_config  # noqa: E402

PROMPT_TOKENS, LONG_PROMPT_TOKENS = 16, 200


def synthetic_tokenizer(vocab_size: int) -> Tokenizer:
    """A tokenizer of exactly vocab_size ids (merges of byte pairs): the engine decodes every id it samples."""
    pairs = ((bytes([a]), bytes([b])) for a in range(256) for b in range(256))
    merges = [next(pairs) for _ in range(vocab_size - 256 - 16)]
    return Tokenizer(merges)


def build(args) -> tuple[dict[str, Engine], torch.nn.Module]:
    """The engine(s) to time, by name, and HF's model with the same weights, dtype and device."""
    slots = max(args.batches)
    if args.run:
        engine = Engine.load(args.run, device=args.device, max_slots=slots, stop_ids=frozenset(), decode=args.decode)
    else:
        config = load_config(args.preset).model
        config.vocab_size = args.vocab
        torch.manual_seed(0)
        model = Transformer(config).eval().to(args.device)
        if args.device == "cuda" and torch.cuda.is_bf16_supported():
            for p in model.parameters():  # as Engine.load: the weights only, the rotary table keeps its precision
                p.data = p.data.to(torch.bfloat16)
        engine = Engine(
            model, synthetic_tokenizer(args.vocab), max_slots=slots, stop_ids=frozenset(), decode=args.decode
        )
    engines = {"ownllm": engine}
    if engine.decode != "plain":
        engines = {
            f"ownllm ({engine.decode})": engine,
            "ownllm (plain)": Engine(
                engine.model, engine.tokenizer, max_slots=slots, stop_ids=frozenset(), decode="plain"
            ),
        }
    from transformers import LlamaConfig, LlamaForCausalLM

    config = engine.model.config
    hf = LlamaForCausalLM(LlamaConfig(**hf_llama_config(config), attn_implementation="sdpa")).eval()
    hf.load_state_dict(to_hf_llama_state_dict(engine.model.state_dict(), config), strict=not config.tie_embeddings)
    return engines, hf.to(device=engine.device, dtype=engine.dtype)


def llama_cpp_contenders(run: Path, threads: int, context: int, repack: bool) -> dict:
    """llama.cpp on the run's model exported as GGUF, f32 and q8_0: a generate function for each."""
    import itertools
    import tempfile

    import llama_cpp
    import llama_cpp.llama

    from ownllm.export.gguf_file import write_gguf

    if not repack:  # llama.cpp's AMX repacking of q8_0 weights crashed (segfault) on the demo model's shapes here
        defaults = llama_cpp.llama_model_default_params

        def no_repacking():
            params = defaults()
            params.use_extra_bufts = False
            return params

        llama_cpp.llama.llama_cpp.llama_model_default_params = no_repacking
    from ownllm.run import RunDir
    from ownllm.run.models import resolve_model

    run_dir = RunDir.open(run, create=False)
    resolved, tokenizer = resolve_model(run_dir), Tokenizer.load(run_dir.tokenizer)
    scratch = Path(tempfile.mkdtemp(prefix="ownllm-bench-gguf-"))
    contenders = {}
    for quantize in ("f32", "q8_0"):
        path = scratch / f"model-{quantize}.gguf"
        write_gguf(tokenizer, resolved, path, run_dir.root.name, quantize)
        llm = llama_cpp.Llama(str(path), n_ctx=context, n_batch=context, n_threads=threads, verbose=False)

        def generate(prompts: torch.Tensor, new: int, llm=llm) -> list[list[int]]:
            return [
                list(itertools.islice(llm.generate(row, temp=0.0, top_k=1, reset=True), new))
                for row in prompts.tolist()
            ]

        contenders[f"llama.cpp {quantize}"] = generate
    return contenders


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--run", type=Path, help="use this run's latest checkpoint and tokenizer (default: random weights)"
    )
    parser.add_argument("--vocab", type=int, default=8192, help="vocabulary of the random model (the demo's)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--new-tokens", type=int, default=128, help="tokens generated per decode measurement")
    parser.add_argument("--sample", action="store_true", help="temperature 0.8, top-k 50 instead of greedy")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--preset", default="cpu", help="the random model's shape (default: %(default)s)")
    parser.add_argument("--batches", default="1,8", help="decode batch sizes (default: %(default)s)")
    parser.add_argument(
        "--decode",
        default="auto",
        choices=DECODE_MODES,
        help="the engine's decode mode (auto: CUDA graphs on a GPU, plain on a CPU; compiled: the static step "
        "through torch.compile); a plain engine is timed beside it",
    )
    parser.add_argument("--json", type=Path, help="also write the medians here")
    parser.add_argument(
        "--llama-cpp", action="store_true", help="also time llama.cpp on the run's model as GGUF (f32, q8_0)"
    )
    parser.add_argument(
        "--llama-repack",
        action="store_true",
        help="let llama.cpp repack weights for its CPU kernels (AMX q8_0 crashed on small models here; off by default)",
    )
    args = parser.parse_args()
    args.batches = [int(b) for b in args.batches.split(",")]

    torch.set_num_threads(args.threads)
    engines, hf = build(args)
    engine = next(iter(engines.values()))
    device = engine.device
    config = engine.model.config
    n_new = min(args.new_tokens, config.max_seq_len - PROMPT_TOKENS)
    vocab = engine.tokenizer.vocab_size
    g = torch.Generator().manual_seed(1)
    short = torch.randint(0, vocab - 16, (max(args.batches), PROMPT_TOKENS), generator=g)
    long = torch.randint(0, vocab - 16, (1, LONG_PROMPT_TOKENS), generator=g)
    sampling = {"temperature": 0.8, "top_k": 50} if args.sample else {"temperature": 0.0}
    hf_sampling = {"do_sample": True, "temperature": 0.8, "top_k": 50} if args.sample else {"do_sample": False}

    def ours_with(chosen: Engine):
        def ours(prompts: torch.Tensor, new: int) -> list[list[int]]:
            params = SamplingParams(max_tokens=new, seed=0, **sampling)
            return [c.ids for c in chosen.generate_batch(prompts.tolist(), params)]

        return ours

    def theirs(prompts: torch.Tensor, new: int) -> list[list[int]]:
        prompts = prompts.to(device)
        with torch.inference_mode():
            out = hf.generate(
                prompts,
                attention_mask=torch.ones_like(prompts),
                max_new_tokens=new,
                min_new_tokens=new,
                eos_token_id=None,
                pad_token_id=0,
                use_cache=True,
                top_p=None,
                **hf_sampling,
            )
        return out[:, prompts.shape[1] :].tolist()

    contenders = {name: ours_with(e) for name, e in engines.items()} | {"HF": theirs}
    if args.llama_cpp:
        if not args.run:
            raise SystemExit("--llama-cpp needs --run (a trained model and its tokenizer to export)")
        contenders |= llama_cpp_contenders(args.run, args.threads, config.max_seq_len, args.llama_repack)
    agreement = {}
    if not args.sample:  # same function, same greedy tokens (a near-tie may flip late; the start must agree)
        a, b = contenders[next(iter(engines))](short[:2], 24), theirs(short[:2], 24)
        agreement["first 8 tokens, ours vs HF"] = [x[:8] for x in a] == [x[:8] for x in b]
        if engine.dtype == torch.float32:
            assert agreement["first 8 tokens, ours vs HF"], f"ours {a} vs HF {b}: the models differ"
        for name in contenders:
            if name.startswith("llama.cpp"):
                agreement[f"first 8 tokens, ours vs {name}"] = [x[:8] for x in a] == [
                    x[:8] for x in contenders[name](short[:2], 24)
                ]
        if len(engines) > 1:
            runs = [contenders[name](short, n_new) for name in engines]
            agreement[f"{engine.decode} vs plain, greedy, identical sequences"] = (
                f"{sum(x == y for x, y in zip(*runs))} of {len(runs[0])}"
            )

    matrices = [p for name, p in engine.model.named_parameters() if p.dim() == 2 and name != "embed.weight"]
    if engine.model.lm_head is None:
        matrices.append(engine.model.embed.weight)

    def floor(prompts: torch.Tensor, new: int) -> None:
        """Only the weight matrix products of `new` single-token steps: what no engine can skip at batch 1."""
        inputs = {w.shape[1]: torch.randn(1, 1, w.shape[1], device=device, dtype=w.dtype) for w in matrices}
        with torch.inference_mode():
            for _ in range(new):
                for w in matrices:
                    torch.nn.functional.linear(inputs[w.shape[1]], w)
        if device.type == "cuda":
            torch.cuda.synchronize()

    scenarios = {f"decode b{b}": (short[:b], n_new, b * n_new) for b in args.batches}
    scenarios["prefill"] = (long, 1, LONG_PROMPT_TOKENS)
    import transformers

    where = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or platform.machine()
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, {where}, "
        f"{args.threads} threads; load average at start {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"
    )
    print(
        f"model: {config.n_layers} layers x {config.d_model}, {config.n_heads} heads, vocab {config.vocab_size}, "
        f"{engine.model.num_params():,} parameters, {'weights of ' + str(args.run) if args.run else 'random weights'}, "
        f"{str(engine.dtype).removeprefix('torch.')}; {'sampling (T=0.8, top-k 50)' if args.sample else 'greedy'}; "
        f"{n_new} new tokens per decode"
    )
    for what, agreed in agreement.items():
        print(f"{what}: {agreed}")
    for fn in contenders.values():  # warm-up (and, for the graphs, the captures this bench needs)
        for prompts, new, _ in scenarios.values():
            fn(prompts, new)

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
            if scenario == "decode b1" and "decode b1" in scenarios:
                start, cpu_start = time.perf_counter(), time.process_time()
                floor(prompts, new)
                floor_rates.append((tokens / (time.perf_counter() - start), tokens / (time.process_time() - cpu_start)))
        print(
            f"round {r + 1}: "
            + "; ".join(f"{s} " + " / ".join(f"{rates[s, c][-1]:,.0f}" for c in contenders) for s in scenarios),
            flush=True,
        )

    results = {"agreement": agreement}
    for clock, table in (("wall-clock", rates), ("CPU-time", cpu_rates)):
        for name in engines:
            print(
                f"\n{clock + ' tok/s':<20}{name + ' median':>22}{'best':>9}{'HF median':>12}{'best':>9}"
                f"{'ratio (median of rounds)':>27}"
            )
            for s in scenarios:
                mine, hfs = table[s, name], table[s, "HF"]
                paired = [x / y for x, y in zip(mine, hfs)]
                print(
                    f"{s:<20}{statistics.median(mine):>22,.0f}{max(mine):>9,.0f}{statistics.median(hfs):>12,.0f}"
                    f"{max(hfs):>9,.0f}{statistics.median(paired):>14.2f}x (range {min(paired):.2f}-{max(paired):.2f})"
                )
                results[f"{clock} {s} {name}"] = {
                    "tok_s": statistics.median(mine),
                    "hf_tok_s": statistics.median(hfs),
                    "ratio": statistics.median(paired),
                }
    first = next(iter(engines))
    for name in (c for c in contenders if c.startswith("llama.cpp")):
        print(f"\n{'wall-clock tok/s':<20}{name + ' median':>22}{'best':>9}{'ours / ' + name:>30}")
        for s in scenarios:
            theirs_rates, paired = rates[s, name], [x / y for x, y in zip(rates[s, first], rates[s, name])]
            print(
                f"{s:<20}{statistics.median(theirs_rates):>22,.0f}{max(theirs_rates):>9,.0f}"
                f"{statistics.median(paired):>17.2f}x (range {min(paired):.2f}-{max(paired):.2f})"
            )
            results[f"wall-clock {s} {name}"] = {
                "tok_s": statistics.median(theirs_rates),
                "ours_ratio": statistics.median(paired),
            }
    if floor_rates:
        wall_floor = statistics.median(w for w, _ in floor_rates)
        cpu_floor = statistics.median(c for _, c in floor_rates)
        print(
            f"\nfloor at batch 1 (the {len(matrices)} weight matrix-vector products per token, nothing else): "
            f"{wall_floor:,.0f} tok/s wall, {cpu_floor:,.0f} tok/s CPU time; an engine with no other cost would be "
            f"{wall_floor / statistics.median(rates['decode b1', 'HF']):.2f}x (wall) / "
            f"{cpu_floor / statistics.median(cpu_rates['decode b1', 'HF']):.2f}x (CPU) HF's median here"
        )
    print(
        f"time to first token, {LONG_PROMPT_TOKENS}-token prompt: "
        + ", ".join(
            f"{name} {statistics.median(ttft[name]) * 1e3:.1f} ms (best {min(ttft[name]) * 1e3:.1f})"
            for name in contenders
        )
        + f"; load average at end {os.getloadavg()[0]:.2f}"
    )
    results["ttft_ms"] = {name: statistics.median(ttft[name]) * 1e3 for name in contenders}
    if device.type == "cuda":
        captured = [e._static.captured() for e in engines.values() if e._static is not None and e._static.graphs]
        print(f"CUDA graphs captured (rows, key span): {captured}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    for e in engines.values():
        e.close()


if __name__ == "__main__":
    main()
