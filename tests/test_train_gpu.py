"""Training on a CUDA GPU: precision detection, mixed precision, checkpoints (skipped without CUDA)."""

from __future__ import annotations

import pytest
import torch

from ownllm.cli import main
from ownllm.train.device import choose_precision, resolve_device

from test_train_helpers import byte_level_run, step_losses

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible to PyTorch"),
]


def test_cuda_precision_is_detected():
    precision = choose_precision(resolve_device("auto"), "auto")
    assert precision.device.type == "cuda"
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    assert precision.dtype == expected and precision.peak_flops > 1e12


def test_tiny_run_learns_and_resumes_on_the_gpu(tmp_path, capsys):
    run = byte_level_run(tmp_path / "run")
    args = ["pretrain", "--run", str(run), "--preset", "tiny", "--set", "steps=40", "--set", "checkpoint_every=20"]
    with pytest.raises(SystemExit) as done:
        main(args)
    assert done.value.code == 0, capsys.readouterr().err
    losses = step_losses(run)
    assert losses[40] < losses[1] - 1.0
    with pytest.raises(SystemExit) as again:
        main(["pretrain", "--run", str(run), "--resume", "--set", "steps=50"])
    assert again.value.code == 0 and max(step_losses(run)) == 50
