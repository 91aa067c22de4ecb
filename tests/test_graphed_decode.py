"""Fixed-shape decode steps (inference/graphed_decode.py): the plain step's tokens, with and without CUDA graphs.

On any machine the static step (padded rows and key positions under a mask) must decode
exactly what the engine's plain step decodes. Where CUDA exists, the captured graphs must
give the very logits of the static step run without capture, and the same greedy text as the
plain step.
"""

from __future__ import annotations

import pytest
import torch

from ownllm.inference.engine import Engine, SamplingParams
from ownllm.inference.graphed_decode import MIN_SPAN, StaticDecoder
from ownllm.model import ModelConfig, Transformer
from ownllm.model.kv_cache import KVCache
from ownllm.tokenizer import Tokenizer

BYTES = Tokenizer([])
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible to PyTorch")


def random_model(device: str = "cpu", max_seq_len: int = 256) -> Transformer:
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=BYTES.vocab_size, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=max_seq_len
    )
    return Transformer(config).to(device).eval()


def prompts(lengths: tuple[int, ...], seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (n,), generator=g).tolist() for n in lengths]


def decode_all(model, mode: str, params, lengths=(3, 70, 12, 1, 130, 40), max_slots: int = 4):
    """Six prompts through four slots (slots free and refill in the middle), one setting each."""
    with Engine(model, BYTES, max_slots=max_slots, stop_ids=frozenset(), decode=mode) as engine:
        return [c.ids for c in engine.generate_batch(prompts(lengths), params)]


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_static_step_decodes_like_the_plain_step(one_thread):
    """Spans grow past 64 and 128 keys; sequences end at different times; fp32, greedy and seeded sampling."""
    model = random_model()
    params = [SamplingParams(temperature=0, max_tokens=n) for n in (90, 20, 60, 5, 100, 75)]
    params[2] = SamplingParams(temperature=1.0, top_k=40, max_tokens=60, seed=7)
    assert decode_all(model, "static", params) == decode_all(model, "plain", params)


def test_compiled_step_decodes_like_the_plain_step(one_thread):
    """decode="compiled" (torch.compile of the static step, one shape here: compiling takes seconds)."""
    model = random_model()
    params = [SamplingParams(temperature=0, max_tokens=40)]
    assert decode_all(model, "compiled", params, lengths=(12,), max_slots=1) == decode_all(
        model, "plain", params, lengths=(12,), max_slots=1
    )


@pytest.mark.slow
def test_compiled_step_decodes_like_the_plain_step_in_every_shape(one_thread):
    """Every (rows, span) the six prompts need, each compiled on first use; greedy and seeded sampling."""
    model = random_model()
    params = [SamplingParams(temperature=0, max_tokens=n) for n in (90, 20, 60, 5, 100, 75)]
    params[2] = SamplingParams(temperature=1.0, top_k=40, max_tokens=60, seed=7)
    assert decode_all(model, "compiled", params) == decode_all(model, "plain", params)


def test_static_step_fills_the_cache_like_the_plain_step(one_thread):
    """The keys and values the static step writes are the ones the plain step writes, position for position."""
    model = random_model()
    caches = []
    for static in (False, True):
        cache = KVCache(model.config, slots=4)
        decoder = StaticDecoder(model, cache, BYTES.vocab_size, graphs=False)
        lengths, tokens = [5, 9], [11, 12]
        with torch.no_grad():
            for slot, n in zip((0, 2), lengths):
                model(torch.tensor([prompts((n,), seed=slot)[0]]), cache=cache.view([slot], [0], n))
            if static:
                logits = decoder([0, 2], lengths, tokens)
            else:
                logits = model(torch.tensor(tokens).view(2, 1), cache=cache.view([0, 2], lengths, 1), last_only=True)[
                    :, 0
                ]
        caches.append((cache, logits))
    (plain, plain_logits), (static, static_logits) = caches
    torch.testing.assert_close(static_logits, plain_logits, rtol=1e-5, atol=1e-5)
    for slot, n in zip((0, 2), (6, 10)):  # the prompt and the new token
        for layer in range(model.config.n_layers):
            for static_part, plain_part in ((static.keys, plain.keys), (static.values, plain.values)):
                torch.testing.assert_close(
                    static_part[layer][slot, :n], plain_part[layer][slot, :n], rtol=1e-5, atol=1e-6
                )


def test_graphs_need_cuda():
    model = random_model()
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            StaticDecoder(model, KVCache(model.config, slots=1), BYTES.vocab_size, graphs=True)
    assert MIN_SPAN == 64


@pytest.mark.gpu
@cuda
def test_cuda_graphs_replay_the_static_step_exactly():
    model = random_model("cuda")
    results = {}
    for graphs in (False, True):
        cache = KVCache(model.config, slots=4, device="cuda")
        decoder = StaticDecoder(model, cache, BYTES.vocab_size, graphs=graphs)
        with torch.inference_mode():
            for slot, n in ((0, 5), (1, 80), (3, 30)):
                model(torch.tensor([prompts((n,), seed=slot)[0]], device="cuda"), cache=cache.view([slot], [0], n))
            steps = [decoder([0, 1, 3], [5 + i, 80 + i, 30 + i], [i, 2 * i, 3 * i]) for i in range(50)]
        results[graphs] = torch.stack(steps)
        if graphs:
            assert decoder.captured() == [(4, 128), (4, 256)]  # 4 rows; keys past 128 after step 48
    assert torch.equal(results[True], results[False])


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_graph_engine_decodes_like_the_plain_engine(dtype):
    """Greedy and seeded text, several requests at once; in bf16 too (graphs replay the static step's kernels)."""
    model = random_model("cuda").to(dtype)
    params = [SamplingParams(temperature=0, max_tokens=n) for n in (90, 20, 60, 5, 100, 75)]
    params[2] = SamplingParams(temperature=1.0, top_k=40, max_tokens=60, seed=7)
    graphed = decode_all(model, "graphs", params)
    assert graphed == decode_all(model, "static", params)
    if dtype == torch.float32:
        assert graphed == decode_all(model, "plain", params)
