"""optimizer=muon (train/muon.py): orthogonal updates for the blocks' matrices, AdamW for the rest, exact resumes."""

from __future__ import annotations

import shutil

import pytest
import torch

from helpers.runs import byte_level_run, ownllm_here, step_losses
from ownllm.model import ModelConfig, Transformer
from ownllm.train.muon import MuonWithAdamW, orthogonalize
from ownllm.train.optim import build_optimizer

TINY = ["--preset", "tiny", "--set", "threads=1", "--set", "dtype=fp32", "--set", "optimizer=muon"]


@pytest.fixture(autouse=True)
def keep_thread_count():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("shape", [(64, 64), (192, 576), (512, 192)])
def test_newton_schulz_makes_every_singular_value_about_one(shape):
    g = torch.randn(shape, generator=torch.Generator().manual_seed(0)) * torch.linspace(0.01, 10, shape[1])
    singular = torch.linalg.svdvals(orthogonalize(g))
    # Five steps bring all but the very smallest singular values of g (a 1000x spread here) into the quintic's
    # band around 1: an update that moves every direction about equally.
    assert singular.max() < 1.25
    assert ((singular > 0.6) & (singular < 1.25)).float().mean() > 0.9


def test_the_blocks_matrices_get_muon_and_the_rest_adamw():
    model = Transformer(ModelConfig(vocab_size=256, d_model=32, n_layers=2, n_heads=2, max_seq_len=16))
    optimizer = build_optimizer(model, 1e-3, 0.1, (0.9, 0.95), torch.device("cpu"), "muon")
    names = {id(p): n for n, p in model.named_parameters()}
    muon, adam_matrices, gains = ({names[id(p)] for p in g["params"]} for g in optimizer.param_groups)
    assert muon == {n for n, p in model.named_parameters() if n.startswith("blocks.") and p.dim() == 2}
    assert adam_matrices == {"embed.weight", "lm_head.weight"}
    assert gains and all(n.endswith("weight") and "norm" in n for n in gains)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.1, 0.0]


def test_the_adamw_half_steps_like_torch_adamw():
    torch.manual_seed(0)
    ours, theirs = torch.nn.Parameter(torch.randn(8, 4)), torch.nn.Parameter(torch.zeros(8, 4))
    theirs.data.copy_(ours.data)
    mine = MuonWithAdamW([{"params": [ours], "weight_decay": 0.1, "muon": False}], lr=1e-2)
    reference = torch.optim.AdamW([theirs], lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    for _ in range(5):
        grad = torch.randn(8, 4)
        ours.grad, theirs.grad = grad.clone(), grad.clone()
        mine.step()
        reference.step()
    torch.testing.assert_close(ours.data, theirs.data, rtol=1e-5, atol=1e-6)


def test_muon_refuses_a_vector():
    with pytest.raises(ValueError, match="matrices only"):
        MuonWithAdamW([{"params": [torch.nn.Parameter(torch.ones(3))], "weight_decay": 0.0, "muon": True}], lr=1e-3)


def test_a_muon_run_learns_and_resumes_exactly(tmp_path, capsys):
    """30 steps straight; then the checkpoints after step 10 thrown away and the run resumed from step 10:
    the same losses bit for bit (Muon's momentum and AdamW's moments are in the checkpoint)."""
    run = byte_level_run(tmp_path / "run")
    settings = [*TINY, "--set", "steps=30", "--set", "checkpoint_every=10", "--set", "keep_checkpoints=5"]
    status, stderr = ownllm_here(capsys, "pretrain", "--run", run, *settings)
    assert status == 0, stderr
    losses = step_losses(run)
    assert losses[30] < losses[1] - 1.0  # it learns

    checkpoints = run / "checkpoints" / "pretrain"
    for later in ("step_000020", "step_000030"):
        shutil.rmtree(checkpoints / later)
    (checkpoints / "latest").write_text("step_000010\n")
    status, stderr = ownllm_here(capsys, "pretrain", "--run", run, "--resume")
    assert status == 0 and "resuming from" in stderr, stderr
    assert step_losses(run) == losses


def test_an_unknown_optimizer_is_a_one_line_error(tmp_path, capsys):
    run = byte_level_run(tmp_path / "run")
    status, stderr = ownllm_here(capsys, "pretrain", "--run", run, "--preset", "tiny", "--set", "optimizer=sgd")
    assert status != 0 and "optimizer='sgd' is not one of adamw, muon" in stderr and "Traceback" not in stderr
