"""Fixtures every test module may use; the code they share lives in tests/helpers/.

Every test starts from the same random state (Python, NumPy, PyTorch), so a failure replays.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import CORPUS, run_ownllm, torch_threads
from helpers.runs import SFT, TINY_CHAT_BASE, bpe_run, ownllm_here


@pytest.fixture(autouse=True)
def seeded_random_state():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture
def ownllm():
    return run_ownllm


@pytest.fixture
def one_torch_thread():
    """Tiny models run fastest on one thread, and the machine running the tests is shared."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def bundled_corpus() -> Path:
    return CORPUS


@pytest.fixture(scope="module")
def tokenizer_run(tmp_path_factory):
    """A run with a real BPE tokenizer (vocabulary 400) and token shards, not pretrained."""
    return bpe_run(tmp_path_factory.mktemp("bpe") / "run")


@pytest.fixture(scope="module")
def pretrained_run(tokenizer_run, tmp_path_factory):
    """The tokenizer run after a few seconds of tiny pretraining, with room for 256-token conversations."""
    run = tmp_path_factory.mktemp("pretrained") / "run"
    shutil.copytree(tokenizer_run, run)
    status, err = ownllm_here(None, "pretrain", "--run", run, *TINY_CHAT_BASE)
    assert status == 0, err
    return run


@pytest.fixture(scope="module")
def chat_run(pretrained_run, tmp_path_factory):
    """The pretrained run after a few steps of fine-tuning as "Ada": a base model and a chat model."""
    run = tmp_path_factory.mktemp("chat") / "run"
    shutil.copytree(pretrained_run, run)
    status, err = ownllm_here(None, "sft", "--run", run, *SFT, "--persona-name", "Ada", "--set", "steps=4")
    assert status == 0, err
    return run
