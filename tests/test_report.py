"""`ownllm report`: report.md with its tables and plots, for one run and for several side by side."""

from __future__ import annotations

import shutil

from helpers.runs import bpe_run, ownllm_here

PNG = b"\x89PNG\r\n\x1a\n"


def test_report_of_a_run_and_of_two_compared(tmp_path, capsys):
    first = bpe_run(tmp_path / "first")
    status, err = ownllm_here(
        capsys,
        "pretrain",
        "--run",
        first,
        "--preset",
        "tiny",
        "--set",
        "steps=6",
        "--set",
        "eval_every=3",
        "--set",
        "threads=1",
        "--set",
        "sample_every=0",
    )
    assert status == 0, err
    status, err = ownllm_here(capsys, "eval", "--run", first, "--tasks", "piqa,blimp", "--limit", "2")
    assert status == 0, err
    second = tmp_path / "second"
    shutil.copytree(first, second)

    status, err = ownllm_here(capsys, "report", "--run", first)
    assert status == 0, err
    report = (first / "report" / "report.md").read_text()
    assert "| vocabulary | 400 |" in report and "| pretraining steps, tokens | 6, 3,072 |" in report
    assert "| piqa | acc |" in report and "| blimp | acc |" in report and "| core | core |" in report
    assert "| fine-tuning steps, held-out loss | - |" in report  # not fine-tuned: said, not guessed
    for name in ("loss", "bpb", "lr", "grad_norm", "throughput", "mfu", "core"):
        png = first / "report" / "plots" / f"{name}.png"
        assert png.read_bytes()[:8] == PNG and png.stat().st_size > 5000, name
        assert f"(plots/{name}.png)" in report
    assert not (first / "report" / "plots" / "sft.png").exists()

    status, err = ownllm_here(capsys, "report", "--run", first, "--compare", second, "--out", tmp_path / "both")
    assert status == 0, err
    both = (tmp_path / "both" / "report.md").read_text()
    assert "| | first | second |" in both and "**second, pretrain step 6**" in both

    status, err = ownllm_here(capsys, "report", "--run", first, "--compare", tmp_path / "missing")
    assert status == 2 and err.count("\n") == 1 and "does not exist" in err
