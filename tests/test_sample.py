"""`ownllm sample` and the pretraining samples, on a model trained with a real tokenizer.

(The engine itself is tested in test_inference_engine.py.)
"""

from __future__ import annotations

import pytest
import torch

from helpers import run_ownllm
from helpers.runs import bpe_run, byte_level_run, metrics
from ownllm.cli import main
from ownllm.commands.pretrain import make_sampler
from ownllm.model import Transformer
from ownllm.run import RunDir
from ownllm.run.checkpoints import latest_checkpoint, load_model
from ownllm.tokenizer import Tokenizer
from ownllm.train.config import load_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_pretrain_then_sample_with_a_real_tokenizer(tmp_path, capsys):
    run = bpe_run(tmp_path / "run")
    try:
        main(
            [
                "pretrain",
                "--run",
                str(run),
                "--preset",
                "tiny",
                "--set",
                "steps=30",
                "--set",
                "sample_every=15",
                "--set",
                "threads=1",
            ]
        )
    except SystemExit as e:
        assert e.code == 0, capsys.readouterr().err
    samples = [r["samples"] for r in metrics(run) if "samples" in r]
    assert len(samples) == 2  # at steps 15 and 30, one text per prompt
    assert [text.startswith(prompt) for text, prompt in zip(samples[1], ["Once upon a time", "The little dog"])] == [
        True,
        True,
    ]
    assert "bits per byte" in capsys.readouterr().out

    args = ["sample", "--run", run, "--prompt", "Once upon a time", "--max-tokens", "20", "--seed", "1"]
    result = run_ownllm(*args)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Once upon a time") and len(result.stdout) > len("Once upon a time") + 5
    # The same seed in another process gives the same text; the model reloaded here agrees too.
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    same_newlines = capsys.readouterr().out.replace("\r\n", "\n").replace("\r", "\n")  # as text=True reads them
    assert exit_info.value.code == 0 and same_newlines == result.stdout
    model, state = load_model(latest_checkpoint(run / "checkpoints" / "pretrain"))
    assert state["step"] == 30 and model.config.vocab_size == 400
    # The compiled decode step (--decode compiled) samples the very same text.
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in [*args, "--decode", "compiled"]])
    compiled = capsys.readouterr().out.replace("\r\n", "\n").replace("\r", "\n")
    assert exit_info.value.code == 0 and compiled == result.stdout


def test_sample_errors_are_one_line(tmp_path, capsys):
    run = byte_level_run(tmp_path / "run")  # shards but no tokenizer, no checkpoint
    cases = [
        (["--run", run], "no checkpoint"),
        (["--run", tmp_path / "missing"], "does not exist"),
        (["--run", run, "--max-tokens", "0"], "at least 1"),
        (["--run", run, "--checkpoint", tmp_path], "not a checkpoint"),
    ]
    for args, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(["sample", *map(str, args)])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1


def test_pretraining_samples_repeat_and_leave_the_training_randomness_alone(tmp_path):
    tokenizer = Tokenizer([])
    tokenizer.save(tmp_path / "tokenizer")
    config = load_config("tiny", ["sample_tokens=12"])
    config.model.vocab_size = tokenizer.vocab_size
    sample = make_sampler(RunDir(tmp_path), config)
    torch.manual_seed(0)
    model = Transformer(config.model).eval()
    expected = torch.rand(3)
    torch.manual_seed(0)
    Transformer(config.model)
    first, second = sample(model), sample(model)
    assert first == second and len(first) == len(config.prompts)
    assert all(text.startswith(prompt) for text, prompt in zip(first, config.prompts))
    assert torch.equal(torch.rand(3), expected)
