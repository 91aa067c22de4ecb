"""`ownllm pretrain` as a user runs it: the real command line, real signals, real text.

The exact-resume test trains 40 steps straight; then trains the same run again in another
directory as a separate process, kills it with SIGKILL after a checkpoint, resumes it in a
new process, and requires the per-step losses of the two to be bit-identical (fp32 on CPU,
one thread in both). Signals and exit statuses are checked on real processes; the other
cases call the same command-line entry point in this process, to spare a PyTorch start-up.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from helpers import REPO, run_ownllm
from helpers.runs import byte_level_run, metrics, ownllm_here, step_losses

# A small model with gradient accumulation (2 micro-batches per step), about 20-50 ms a step.
TRAIN = [
    "--preset",
    "tiny",
    "--set",
    "threads=1",
    "--set",
    "dtype=fp32",
    "--set",
    "micro_batch=16",
    "--set",
    "batch_tokens=2048",
    "--set",
    "eval_every=20",
    "--set",
    "eval_tokens=1024",
]


@pytest.fixture(autouse=True)
def keep_thread_count():
    """Training here sets PyTorch's thread count (threads=1); put it back for the tests that follow."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def start_ownllm(*args) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OWNLLM_PROGRESS": "0"}
    return subprocess.Popen(
        [sys.executable, "-m", "ownllm", *map(str, args)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(condition, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the training process ended early: {proc.communicate()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("timed out waiting for the training process")
        time.sleep(0.01)


def test_resume_after_sigkill_gives_bit_identical_losses(tmp_path, capsys):
    settings = [*TRAIN, "--set", "steps=40", "--set", "checkpoint_every=10"]
    straight = byte_level_run(tmp_path / "straight")
    status, stderr = ownllm_here(capsys, "pretrain", "--run", straight, *settings)
    assert status == 0, stderr

    killed = byte_level_run(tmp_path / "killed")
    proc = start_ownllm("pretrain", "--run", killed, *settings)
    latest = killed / "checkpoints" / "pretrain" / "latest"
    wait_for(latest.exists, proc)
    time.sleep(random.uniform(0.0, 0.3))  # anywhere after the first checkpoint
    assert proc.poll() is None, "the run finished before it could be killed; make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    steps_before_kill = max(step_losses(killed))
    assert steps_before_kill < 40

    resumed = run_ownllm("pretrain", "--run", killed, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr
    expected, got = step_losses(straight), step_losses(killed)
    assert sorted(expected) == list(range(1, 41))
    assert got == expected  # every step, bit for bit, including those redone after the checkpoint


@pytest.mark.parametrize("sig, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_ctrl_c_save_a_checkpoint_then_exit(tmp_path, sig, status):
    run = byte_level_run(tmp_path / "run")
    proc = start_ownllm("pretrain", "--run", run, *TRAIN, "--set", "steps=100000", "--set", "checkpoint_every=0")
    wait_for(lambda: max(step_losses(run), default=0) >= 3, proc)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == status, stderr
    last_step = max(step_losses(run))
    assert f"interrupted at step {last_step}" in stderr and "--resume" in stderr
    latest = (run / "checkpoints" / "pretrain" / "latest").read_text().strip()
    assert latest == f"step_{last_step:06d}"
    assert (run / "checkpoints" / "pretrain" / latest / "model.safetensors").is_file()
    assert "Traceback" not in stderr


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    run = byte_level_run(tmp_path / "run")
    status, stderr = ownllm_here(
        capsys, "pretrain", "--run", run, *TRAIN, "--set", "steps=10", "--set", "checkpoint_every=5"
    )
    assert status == 0, stderr

    status, stderr = ownllm_here(capsys, "pretrain", "--run", run, *TRAIN)
    assert status == 2 and "already has checkpoints" in stderr and "--resume" in stderr
    # A mistyped setting is reported as such, even with --restart, and deletes nothing.
    saved = sorted(p.name for p in (run / "checkpoints" / "pretrain").iterdir())
    for restart in ([], ["--restart"]):
        status, stderr = ownllm_here(capsys, "pretrain", "--run", run, *TRAIN, *restart, "--set", "lrr=1")
        assert status == 2 and "unknown setting 'lrr'" in stderr and "did you mean lr" in stderr
    assert sorted(p.name for p in (run / "checkpoints" / "pretrain").iterdir()) == saved
    status, stderr = ownllm_here(capsys, "pretrain", "--run", run, "--resume", "--set", "model.n_layers=5")
    assert status == 2 and "shape" in stderr

    # An absurd learning rate makes the weights overflow within a couple of steps.
    status, stderr = ownllm_here(capsys, "pretrain", "--run", run, "--resume", "--set", "steps=30", "--set", "lr=1e30")
    assert status == 2, stderr
    error = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1
    assert "diverged" in error[0] and "at step 1" in error[0] and "step_000010" in error[0]
    assert (run / "checkpoints" / "pretrain" / "latest").read_text().strip() == "step_000010"
    assert not any(p.name > "step_000010" for p in (run / "checkpoints" / "pretrain").glob("step_*"))


def test_time_budget_plans_the_steps_and_finishes_the_decay(tmp_path, capsys):
    run = byte_level_run(tmp_path / "run")
    status, stderr = ownllm_here(
        capsys,
        "pretrain",
        "--run",
        run,
        *TRAIN,
        "--time-budget",
        "5s",
        "--set",
        "warmup_steps=5",
        "--set",
        "min_lr_ratio=0.1",
        "--set",
        "lr=0.002",
    )
    assert status == 0, stderr
    records = metrics(run)
    # The first plan times the early steps; re-plans (at evaluations) may move the end if the speed changes.
    plans = [r for r in records if r.get("event") in ("plan", "replan")]
    assert plans[0]["event"] == "plan"
    steps = [r for r in records if "loss" in r]
    assert steps[-1]["step"] == plans[-1]["total_steps"] > plans[0]["step"]
    assert steps[-1]["lr"] == pytest.approx(0.0002, rel=0.05)  # the decay reached its end on the last step
    done = next(r for r in records if r.get("event") == "done")
    assert 2.5 < done["elapsed"] < 5 * 1.5 + 2, "a budget is a plan, not a promise, on a shared machine; but close"


def test_user_mistakes_exit_2_with_one_line_from_a_real_process(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    good = byte_level_run(tmp_path / "good")
    cases = {
        "no token shards": (["--run", empty, "--preset", "tiny"], "no token shards"),
        "heads": (["--run", good, "--preset", "tiny", "--set", "model.n_heads=3"], "does not divide"),
    }
    procs = {name: start_ownllm("pretrain", *args) for name, (args, _) in cases.items()}  # in parallel
    for name, proc in procs.items():
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 2, f"{name}: {stderr}"
        assert stderr.startswith("error: ") and stderr.count("\n") == 1, f"{name}: {stderr}"
        assert cases[name][1] in stderr, f"{name}: {stderr}"


def test_user_mistakes_are_one_line_errors(tmp_path, capsys):
    good = byte_level_run(tmp_path / "good")
    stale = byte_level_run(tmp_path / "stale")
    (stale / "tokenizer").mkdir()
    (stale / "tokenizer" / "tokenizer.json").write_text("{}")  # not the tokenizer the shards were made with
    cases = {
        "no run directory": (["--run", tmp_path / "missing", "--preset", "tiny"], "does not exist"),
        "stale shards": (["--run", stale, "--preset", "tiny"], "another tokenizer"),
        "position limit": (["--run", good, "--preset", "tiny", "--set", "seq_len=128"], "position limit"),
        "bad value": (["--run", good, "--preset", "tiny", "--set", "lr=fast"], "expected a number"),
        "memory": (
            ["--run", good, "--preset", "tiny", "--set", "micro_batch=4000000", "--set", "batch_tokens=256000000"],
            "memory",
        ),
        "nothing to resume": (["--run", good, "--resume"], "nothing to resume"),
        "budget": (["--run", good, "--preset", "tiny", "--time-budget", "soon"], "not a duration"),
    }
    for name, (args, message) in cases.items():
        status, stderr = ownllm_here(capsys, "pretrain", *args)
        assert status == 2, f"{name}: {stderr}"
        assert stderr.startswith("error: ") and stderr.count("\n") == 1, f"{name}: {stderr}"
        assert message in stderr, f"{name}: {stderr}"
    assert not (good / "checkpoints").exists()  # nothing was written by the failed attempts
