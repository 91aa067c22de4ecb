"""Our model against an independent implementation, and under torch.compile (both slow: marked)."""

from __future__ import annotations

import pytest
import torch

from ownllm.model import ModelConfig, Transformer
from ownllm.model.hf_compat import hf_llama_config, to_hf_llama_state_dict


@pytest.mark.slow
@pytest.mark.parametrize("changes", [{}, {"n_kv_heads": 2, "tie_embeddings": True, "rope_theta": 500.0}])
def test_same_logits_as_hugging_face_llama(changes):
    transformers = pytest.importorskip("transformers", reason="the bench extra (transformers) is not installed")
    config = ModelConfig(vocab_size=300, n_layers=2, d_model=64, n_heads=4, max_seq_len=64, **changes)
    torch.manual_seed(0)
    ours = Transformer(config).eval()
    theirs = transformers.LlamaForCausalLM(transformers.LlamaConfig(**hf_llama_config(config))).eval()
    missing, unexpected = theirs.load_state_dict(to_hf_llama_state_dict(ours.state_dict(), config), strict=False)
    assert not unexpected and missing == (["lm_head.weight"] if config.tie_embeddings else [])
    idx = torch.randint(0, 300, (2, 64))
    with torch.no_grad():
        assert torch.allclose(ours(idx), theirs(input_ids=idx).logits, atol=1e-5)


@pytest.mark.slow
def test_compiled_model_computes_the_same_loss_and_gradients():
    """Under torch.compile the model takes the real-number rotary path and the plain loss."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=300, n_layers=2, d_model=64, n_heads=4, max_seq_len=32, qk_norm=True))
    idx = torch.randint(0, 300, (2, 33))
    eager = model(idx[:, :-1], idx[:, 1:])
    eager_grads = torch.autograd.grad(eager, list(model.parameters()))
    compiled = torch.compile(model)(idx[:, :-1], idx[:, 1:])
    compiled_grads = torch.autograd.grad(compiled, list(model.parameters()))
    assert compiled.item() == pytest.approx(eager.item(), rel=1e-5)
    for a, b in zip(eager_grads, compiled_grads):
        assert torch.allclose(a, b, atol=1e-5)
