"""The KV cache gives the logits of full recomputation, one row or several of different lengths."""

import pytest
import torch

from ownllm.model import ModelConfig, Transformer
from ownllm.model.kv_cache import KVCache


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=97, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=48)
    return Transformer(config).eval()


def full_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids]))[0]


def test_prefill_then_decode_equals_recompute(model):
    ids = torch.randint(0, 97, (30,)).tolist()
    cache = KVCache(model.config, slots=1)
    with torch.no_grad():
        prefill = model(torch.tensor([ids[:20]]), cache=cache.view([0], [0], 20))[0]
        steps = [model(torch.tensor([[t]]), cache=cache.view([0], [20 + i], 1))[0, 0] for i, t in enumerate(ids[20:])]
    expected = full_logits(model, ids)
    torch.testing.assert_close(prefill, expected[:20], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(torch.stack(steps), expected[20:], atol=1e-5, rtol=1e-4)


def test_rows_of_different_lengths_in_any_slots(model):
    prompts = [torch.randint(0, 97, (n,)).tolist() for n in (5, 17, 11)]
    slots = [2, 0, 3]
    cache = KVCache(model.config, slots=4, max_len=32)
    with torch.no_grad():
        for slot, p in zip(slots, prompts):
            model(torch.tensor([p[:-1]]), cache=cache.view([slot], [0], len(p) - 1))
        # one decode step for all three rows at once, each at its own position
        last = torch.tensor([[p[-1]] for p in prompts])
        out = model(last, cache=cache.view(slots, [len(p) - 1 for p in prompts], 1), last_only=True)[:, 0]
    for row, p in enumerate(prompts):
        torch.testing.assert_close(out[row], full_logits(model, p)[-1], atol=1e-5, rtol=1e-4)


def test_cache_refuses_more_than_max_seq_len(model):
    with pytest.raises(ValueError):
        KVCache(model.config, slots=1, max_len=49)
    cache = KVCache(model.config, slots=1, max_len=8)
    with pytest.raises(ValueError):
        cache.view([0], [5], 4)


def test_consecutive_slots_at_one_position_write_through_slices(model):
    """Slots 1 and 2 prefilled together (same length), then decoded together: the slice path."""
    prompts = [torch.randint(0, 97, (9,)).tolist() for _ in range(2)]
    cache = KVCache(model.config, slots=3, max_len=16)
    with torch.no_grad():
        model(torch.tensor([p[:-1] for p in prompts]), cache=cache.view([1, 2], [0, 0], 8))
        out = model(torch.tensor([[p[-1]] for p in prompts]), cache=cache.view([1, 2], [8, 8], 1), last_only=True)
    for row, p in enumerate(prompts):
        torch.testing.assert_close(out[row, 0], full_logits(model, p)[-1], atol=1e-5, rtol=1e-4)
    assert all(layer[0].abs().sum() == 0 for layer in cache.keys)  # slot 0 untouched
