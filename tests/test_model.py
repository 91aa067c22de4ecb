"""The transformer: shapes, causality, parameter count, rotary positions, the fused loss, learning."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from helpers.runs import story_documents
from ownllm.core.errors import UserError
from ownllm.model import ModelConfig, Transformer
from ownllm.model.layers import _rotate_complex, _rotate_real, apply_rotary, rotary_tables
from ownllm.model.loss import IGNORE_INDEX, linear_cross_entropy

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def small(**changes) -> ModelConfig:
    settings = dict(vocab_size=257, n_layers=2, d_model=64, n_heads=4, max_seq_len=32)
    return ModelConfig(**(settings | changes))


def story_tokens(batch: int, length: int) -> torch.Tensor:
    data = " ".join(story_documents(20_000)).encode("utf-8")
    return torch.tensor(list(data[: batch * length]), dtype=torch.long).view(batch, length)


@pytest.mark.parametrize("changes", [{}, {"n_kv_heads": 2, "tie_embeddings": True}, {"qk_norm": True, "n_kv_heads": 1}])
def test_shapes_and_loss(changes):
    torch.manual_seed(0)
    model = Transformer(small(**changes))
    idx = story_tokens(3, 17)
    logits = model(idx)
    assert logits.shape == (3, 17, 257)
    loss = model(idx[:, :-1], idx[:, 1:])
    assert loss.shape == () and 4.0 < loss.item() < 7.0  # about ln(257) = 5.55 for a fresh model


@pytest.mark.parametrize("changes", [{}, {"n_kv_heads": 1, "qk_norm": True}])
def test_a_token_never_sees_the_future(changes):
    torch.manual_seed(0)
    model = Transformer(small(**changes)).eval()
    idx = story_tokens(2, 24)
    changed = idx.clone()
    changed[:, 15] = (changed[:, 15] + 7) % 257
    with torch.no_grad():
        before, after = model(idx), model(changed)
    assert torch.allclose(before[:, :15], after[:, :15], atol=1e-6, rtol=0)
    assert not torch.allclose(before[:, 15:], after[:, 15:], atol=1e-3)  # the change is seen from there on


@pytest.mark.parametrize(
    "changes", [{}, {"tie_embeddings": True}, {"n_kv_heads": 2, "qk_norm": True, "ffn_hidden": 100}]
)
def test_parameter_count_matches_the_formula(changes):
    c = small(**changes)
    d, hd, h = c.d_model, c.head_dim, c.hidden_dim
    per_layer = d * (c.n_heads + 2 * c.kv_heads) * hd + c.n_heads * hd * d + 3 * d * h + 2 * d
    per_layer += 2 * hd if c.qk_norm else 0
    expected = c.vocab_size * d * (1 if c.tie_embeddings else 2) + c.n_layers * per_layer + d
    assert Transformer(c).num_params() == expected


def test_llama_hidden_size_rule():
    assert ModelConfig(d_model=768).hidden_dim == 2048
    assert ModelConfig(d_model=256).hidden_dim == 704  # 8/3 * 256 = 682.7, rounded up to a multiple of 64


def test_flops_per_token():
    c = small()
    model = Transformer(c)
    matmul_weights = (
        model.num_params() - c.vocab_size * c.d_model - (2 * c.n_layers + 1) * c.d_model
    )  # no embedding, norms
    assert model.flops_per_token(32) == 6 * matmul_weights + 6 * c.n_layers * 32 * c.d_model
    tied = Transformer(small(tie_embeddings=True))
    assert tied.flops_per_token(32) == model.flops_per_token(32)  # tying saves parameters, not computation


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"n_heads": 5}, "does not divide d_model"),
        ({"n_kv_heads": 3}, "does not divide n_heads"),
        ({"d_model": 60, "n_heads": 4}, "odd"),
        ({"dropout": 1.5}, "dropout"),
        ({"n_layers": 0}, "at least 1"),
    ],
)
def test_impossible_shapes_are_refused_in_one_line(changes, message):
    with pytest.raises(UserError, match=message) as info:
        Transformer(small(**changes))
    assert "\n" not in str(info.value)


def test_rotary_attention_depends_only_on_relative_position():
    rotation = rotary_tables(head_dim=16, max_seq_len=64, theta=10000.0)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(m: int, n: int) -> float:
        return (apply_rotary(q, rotation[m : m + 1]) * apply_rotary(k, rotation[n : n + 1])).sum().item()

    assert score(10, 3) == pytest.approx(score(40, 33), abs=1e-4)
    assert score(10, 3) != pytest.approx(score(10, 4), abs=1e-3)
    x = torch.randn(2, 64, 3, 16)
    assert torch.allclose(apply_rotary(x, rotation).norm(dim=-1), x.norm(dim=-1), atol=1e-5)  # a rotation


def test_rotary_real_arithmetic_path_matches_complex_path():
    """The compiled model uses the real-number version; both must be the same rotation."""
    rotation = rotary_tables(16, 32, 500.0)[:, None]
    pairs = torch.randn(2, 32, 3, 8, 2)
    assert torch.allclose(_rotate_real(pairs, rotation), _rotate_complex(pairs, rotation), atol=1e-6)


def test_fused_loss_matches_plain_cross_entropy_and_its_gradients():
    torch.manual_seed(0)
    x = torch.randn(300, 32, requires_grad=True)
    w = torch.randn(50, 32, requires_grad=True)
    targets = torch.randint(0, 50, (300,))
    targets[::7] = IGNORE_INDEX
    fused = linear_cross_entropy(x, w, targets, chunk_rows=64)  # 5 chunks, the last one short
    fused_grads = torch.autograd.grad(3 * fused, (x, w))
    plain = F.cross_entropy(x @ w.t(), targets, ignore_index=IGNORE_INDEX)
    plain_grads = torch.autograd.grad(3 * plain, (x, w))
    assert fused.item() == pytest.approx(plain.item(), rel=1e-5)
    for a, b in zip(fused_grads, plain_grads):
        assert torch.allclose(a, b, atol=1e-6)
    with torch.no_grad():
        assert linear_cross_entropy(x, w, targets).item() == pytest.approx(plain.item(), rel=1e-5)


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = Transformer(small())
    idx = story_tokens(2, 17)
    grads = []
    for checkpointing in (False, True):
        model.grad_checkpointing = checkpointing
        model.zero_grad()
        model(idx[:, :-1], idx[:, 1:]).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-6)


def test_a_tiny_model_overfits_one_batch():
    torch.manual_seed(0)
    model = Transformer(small(d_model=64, n_layers=2))
    idx = story_tokens(4, 33)
    inputs, targets = idx[:, :-1], idx[:, 1:]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = None
    for _ in range(150):
        loss = model(inputs, targets)
        first = first or loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert first > 5.0
    assert loss.item() < 0.1, f"memorising 128 tokens should be easy; loss stayed at {loss.item():.3f}"


def test_longer_than_the_position_limit_is_refused():
    model = Transformer(small(max_seq_len=16))
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_fused_loss_under_bf16_autocast_matches_the_plain_loss():
    """The mixed-precision path (used on GPUs) checked on the CPU's autocast."""
    torch.manual_seed(0)
    x = torch.randn(200, 32, requires_grad=True)
    w = torch.randn(50, 32, requires_grad=True)
    targets = torch.randint(0, 50, (200,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = linear_cross_entropy(x, w, targets, chunk_rows=64)
        plain = F.cross_entropy(F.linear(x, w).float(), targets)
    fused_grads = torch.autograd.grad(fused, (x, w))
    plain_grads = torch.autograd.grad(plain, (x, w))
    assert fused.dtype == torch.float32 and fused.item() == pytest.approx(plain.item(), rel=1e-2)
    for a, b in zip(fused_grads, plain_grads):
        assert a.dtype == torch.float32 and torch.allclose(a, b, atol=2e-2 * b.abs().max().item())
