"""`ownllm report`: report.md with its tables and plots, for one run and for several side by side."""

from __future__ import annotations

import json
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

    status, err = ownllm_here(capsys, "report", "--run", second)  # no corpus manifest: said so
    assert status == 0, err
    assert "corpus manifest is missing" in (second / "report" / "MODEL_CARD.md").read_text()
    (first / "corpus").mkdir()
    manifest = {
        "counts": {"documents_out": 90, "documents_in": 100, "bytes_out": 2_000_000, "files": 2},
        "removed": {"too_short": 10},
        "inputs": [
            {"path": "ownllm/resources/corpus/tinyshakespeare.txt", "bytes": 1_100_000},
            {"path": "/home/me/notes.txt", "bytes": 900_000},
        ],
    }
    (first / "corpus" / "manifest.json").write_text(json.dumps(manifest))
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

    card = (first / "report" / "MODEL_CARD.md").read_text()
    assert card.startswith("# Model card: first (pretrain, step 6)")
    assert "parameters" in card and "| piqa | acc |" in card and "| core | core |" in card
    assert "Not measured: `ownllm eval --tasks crows_pairs`." in card  # said, not guessed
    assert "`/home/me/notes.txt`: 0.90 MB, the user's own file" in card and "## Intended use" in card
    assert "`ownllm/resources/corpus/tinyshakespeare.txt`: 1.10 MB, bundled with ownllm" in card

    status, err = ownllm_here(capsys, "report", "--run", first, "--compare", second, "--out", tmp_path / "both")
    assert status == 0, err
    both = (tmp_path / "both" / "report.md").read_text()
    assert "| | first | second |" in both and "**second, pretrain step 6**" in both

    status, err = ownllm_here(capsys, "report", "--run", first, "--compare", tmp_path / "missing")
    assert status == 2 and err.count("\n") == 1 and "does not exist" in err
