"""Memory: the training estimate, and `micro_batch=auto` choosing the largest micro-batch that fits (CPU path).

The GPU path (trying real passes, smaller on out-of-memory) is in test_train_gpu.py.
"""

from __future__ import annotations

import types

import psutil
import pytest
import torch

from helpers.runs import byte_level_run, metrics
from ownllm.cli import main
from ownllm.core.errors import UserError
from ownllm.model.config import ModelConfig
from ownllm.run import RunDir
from ownllm.train.config import load_config
from ownllm.train.memory import candidates, largest_fitting, training_bytes

MODEL = ModelConfig(vocab_size=257, n_layers=2, d_model=64, n_heads=4, max_seq_len=64)
PARAMS = 140_000


def test_candidates_keep_whole_rows_per_step():
    assert candidates(16) == [16, 8, 4, 2, 1]
    assert candidates(12) == [12, 6, 3, 1]
    assert candidates(1) == [1]


def test_the_largest_micro_batch_within_the_budget_is_chosen():
    need = {size: training_bytes(MODEL, PARAMS, size, 64, grad_checkpointing=False) for size in (1, 2, 4, 8, 16)}
    assert need[1] < need[2] < need[4] < need[8] < need[16]
    assert largest_fitting(MODEL, PARAMS, 16, 64, False, budget=need[4]) == 4
    assert largest_fitting(MODEL, PARAMS, 16, 64, False, budget=need[4] - 1) == 2
    assert largest_fitting(MODEL, PARAMS, 16, 64, False, budget=10 * need[16]) == 16
    # Recomputing activations in the backward pass keeps one block's worth instead of every layer's:
    # in a deep model, a larger micro-batch fits.
    deep = ModelConfig(vocab_size=257, n_layers=12, d_model=64, n_heads=4, max_seq_len=64)
    budget = training_bytes(deep, PARAMS, 4, 64, grad_checkpointing=False)
    assert largest_fitting(deep, PARAMS, 16, 64, False, budget) == 4
    assert largest_fitting(deep, PARAMS, 16, 64, True, budget) == 16
    # FSDP over 4 processes keeps a quarter of the weights and optimizer state on each.
    assert training_bytes(MODEL, PARAMS, 1, 64, False, shards=4) < need[1]
    with pytest.raises(UserError, match="even one sequence"):
        largest_fitting(MODEL, PARAMS, 16, 64, False, budget=need[1] - 1)


def test_auto_is_a_setting():
    assert load_config("tiny", ["micro_batch=auto"]).micro_batch == 0
    with pytest.raises(UserError, match="positive number, or auto"):
        load_config("tiny", ["micro_batch=-2"])


@pytest.mark.parametrize("free_for", [None, 4])
def test_micro_batch_auto_fits_the_free_memory_and_keeps_the_batch(tmp_path, capsys, monkeypatch, free_for):
    """With plenty of RAM a whole step's 16 rows in one pass; with RAM for 4 rows, 4 passes of 4."""
    if free_for is not None:
        config = load_config("tiny")
        config.model.vocab_size = 257
        from ownllm.model import Transformer

        params = Transformer(config.model).num_params()
        free = training_bytes(config.model, params, free_for, 64, False) / 0.9 + 1024
        monkeypatch.setattr(psutil, "virtual_memory", lambda: types.SimpleNamespace(available=free))
    run = byte_level_run(tmp_path / "run")
    threads = torch.get_num_threads()
    with pytest.raises(SystemExit) as done:
        main(
            [
                "pretrain",
                "--run",
                str(run),
                "--preset",
                "tiny",
                "--set",
                "threads=1",
                "--set",
                "steps=2",
                "--set",
                "batch_tokens=1024",
                "--set",
                "micro_batch=auto",
                "--set",
                "eval_every=0",
            ]
        )
    torch.set_num_threads(threads)
    assert done.value.code == 0, capsys.readouterr().err
    expected = 16 if free_for is None else free_for
    start = next(r for r in metrics(run) if r.get("event") == "start")
    assert (start["micro_batch"], start["grad_accum"]) == (expected, 16 // expected)
    assert RunDir(run).read_config()["pretrain"]["micro_batch"] == expected  # the resolved size, for resuming
    assert f"({expected} x 64 x {16 // expected} accumulated)" in capsys.readouterr().err
