"""Training with several processes under torchrun: real processes, gloo on this CPU, 2 ranks.

Runs are shared between tests, since each torchrun start costs seconds (three Python processes
importing PyTorch). Every run trains the same 20 steps of 16 rows (1024 tokens) each:

  single   1 process in this one: micro-batches of 4 rows, 4 accumulated per step
  ddp      torchrun, 2 processes (DDP): micro-batches of 4, 2 accumulated on each
  killed   the ddp run again, every process SIGKILLed after a checkpoint; resumed by 2 processes,
           and a copy of it resumed by 1 process
  fsdp     torchrun, 2 processes with fsdp=true, SIGTERM to rank 1 only; resumed by 1 process

Tolerance between a run of 2 processes and one of 1 (relative, per step): 1e-5. Both see the same
rows in every step (test_ranks_together_read_the_rows_of_one_process), so the two differ only in
the order in which fp32 sums are taken: per-rank gradient sums averaged by the all-reduce against
one sum, and the loss averaged in float64. One rounding is ~6e-8 relative; over the 20 steps the
largest measured difference was 1.2e-7 (2 processes against 1, FSDP against DDP, a resume by 1
process against 2). One wrong row among a step's 16 moves its loss by 7e-4 even at initialisation,
where rows differ least: 70 times the tolerance. Resuming with the same number of processes is
bit-identical (the same sums in the same order).
"""

from __future__ import annotations

import random
import shutil
import signal
import time

import numpy as np
import pytest
import torch

from helpers.processes import finish, kill_everything, torchrun, wait_for, workers
from helpers.runs import byte_level_run, metrics, step_losses
from ownllm.cli import main
from ownllm.core.errors import UserError
from ownllm.run.token_shards import open_tokens
from ownllm.train import distributed
from ownllm.train.config import load_config
from ownllm.train.loader import BatchLoader

TOLERANCE = 1e-5
STEPS = 20
SETTINGS = [
    "--preset",
    "tiny",
    "--set",
    "threads=1",
    "--set",
    "dtype=fp32",
    "--set",
    "batch_tokens=1024",
    "--set",
    "micro_batch=4",
    "--set",
    f"steps={STEPS}",
    "--set",
    "checkpoint_every=5",
    "--set",
    "eval_every=10",
    "--set",
    "eval_tokens=1024",
]


def in_this_process(*args) -> int:
    """`ownllm ARGS` as one process, through the command-line entry point here (spares a PyTorch start-up)."""
    threads = torch.get_num_threads()
    try:
        main([str(a) for a in args])
    except SystemExit as e:
        return e.code
    finally:
        torch.set_num_threads(threads)


def val_losses(run) -> dict[int, float]:
    return {r["step"]: r["val_loss"] for r in metrics(run) if "val_loss" in r}


def assert_close_curves(got: dict[int, float], expected: dict[int, float]) -> None:
    assert got.keys() <= expected.keys() and got
    for step, loss in got.items():
        assert loss == pytest.approx(expected[step], rel=TOLERANCE), f"step {step}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The uninterrupted runs: one process (here) and two (torchrun), started together."""
    root = tmp_path_factory.mktemp("distributed")
    single, ddp = byte_level_run(root / "single"), byte_level_run(root / "ddp")
    proc = torchrun("pretrain", "--run", ddp, *SETTINGS)
    assert in_this_process("pretrain", "--run", single, *SETTINGS) == 0
    status, stderr = finish(proc)
    assert status == 0, stderr
    return {"single": single, "ddp": ddp, "ddp_stderr": stderr, "root": root}


def rows(batch: torch.Tensor) -> list[bytes]:
    """A batch's rows as an unordered collection."""
    return sorted(bytes(row.numpy().astype(np.uint16)) for row in batch)


def test_ranks_together_read_the_rows_of_one_process(tmp_path):
    shards = open_tokens(byte_level_run(tmp_path / "run") / "tokens")
    split = shards.split("train")
    one = BatchLoader(split, seq_len=64, batch_size=4, seed=3)
    ranks = [BatchLoader(split, seq_len=64, batch_size=4, seed=3, rank=r, world=2) for r in range(2)]
    for _ in range(3):  # steps of 16 rows: 4 micro-batches of 4 in one process, 2 of 4 on each of 2 ranks
        alone = torch.cat([one.next_batch()[0] for _ in range(4)])
        together = torch.cat([loader.next_batch()[0] for _ in range(2) for loader in ranks])
        assert rows(alone) == rows(together)


def test_two_processes_follow_the_loss_curve_of_one(runs):
    single, ddp = step_losses(runs["single"]), step_losses(runs["ddp"])
    assert sorted(ddp) == list(range(1, STEPS + 1))
    assert_close_curves(ddp, single)
    assert_close_curves(val_losses(runs["ddp"]), val_losses(runs["single"]))
    assert single[STEPS] < single[1] - 1.0  # it learned: the comparison is not between two flat lines
    start = next(r for r in metrics(runs["ddp"]) if r.get("event") == "start")
    assert (start["world"], start["parallel"], start["micro_batch"], start["grad_accum"]) == (2, "ddp", 4, 2)
    assert "fp32" in start["precision"]


def test_only_rank_0_writes_and_speaks(runs):
    records = metrics(runs["ddp"])
    steps = [r["step"] for r in records if "loss" in r]
    assert steps == list(range(1, STEPS + 1))  # each step logged once: by one process
    assert [r["event"] for r in records if "event" in r] == ["start", "done"]
    stage = runs["ddp"] / "checkpoints" / "pretrain"
    assert sorted(p.name for p in stage.iterdir()) == ["latest", "step_000010", "step_000015", "step_000020"]
    stderr = runs["ddp_stderr"]
    assert stderr.count("model: ") == 1 and stderr.count(f"trained {STEPS} steps") == 1
    assert "x 2 processes (ddp)" in stderr


@pytest.fixture(scope="module")
def killed(runs):
    """A 2-process run killed (every process, SIGKILL) at a random moment after its first checkpoint."""
    run = byte_level_run(runs["root"] / "killed")
    proc = torchrun("pretrain", "--run", run, *SETTINGS)
    wait_for((run / "checkpoints" / "pretrain" / "latest").exists, proc)
    time.sleep(random.uniform(0.0, 0.2))
    assert proc.poll() is None, "the run finished before it could be killed; make it longer"
    kill_everything(proc)
    steps_done = max(step_losses(run))
    assert steps_done < STEPS
    copy = runs["root"] / "killed-copy"
    shutil.copytree(run, copy)
    return run, copy


def test_sigkilled_two_process_run_resumes_exactly(runs, killed):
    run, _ = killed
    status, stderr = finish(torchrun("pretrain", "--run", run, "--resume"))
    assert status == 0, stderr
    assert "resuming from" in stderr
    assert step_losses(run) == step_losses(runs["ddp"])  # every step, bit for bit
    assert val_losses(run) == val_losses(runs["ddp"])


def test_a_two_process_checkpoint_continues_with_one_process(runs, killed, capsys):
    _, copy = killed
    resumed_at = int((copy / "checkpoints" / "pretrain" / "latest").read_text().strip()[5:])
    assert in_this_process("pretrain", "--run", copy, "--resume") == 0
    assert "written by 2 processes and 1 continue it" in capsys.readouterr().err
    event = next(r for r in metrics(copy) if r.get("event") == "resume")
    assert (event["saved_world"], event["world"]) == (2, 1)
    after = {s: loss for s, loss in step_losses(copy).items() if s > resumed_at}
    assert sorted(after) == list(range(resumed_at + 1, STEPS + 1))
    assert_close_curves(after, step_losses(runs["ddp"]))


def test_fsdp_run_stops_on_a_sigterm_to_one_rank_and_its_checkpoint_continues_anywhere(runs, tmp_path):
    run = byte_level_run(tmp_path / "fsdp")
    proc = torchrun("pretrain", "--run", run, *SETTINGS, "--set", "fsdp=true")
    wait_for(lambda: max(step_losses(run), default=0) >= 3, proc)
    workers(proc)[1].send_signal(signal.SIGTERM)  # rank 1 only: rank 0 must learn of it, not wait forever
    status, stderr = finish(proc, timeout=120)
    stopped = max(step_losses(run))
    assert stopped < STEPS, "the run finished before the signal; make it longer"
    assert status != 0 and "exitcode  : 143" in stderr  # both ranks exit 143; torchrun reports it
    assert f"interrupted at step {stopped}" in stderr
    assert (run / "checkpoints" / "pretrain" / "latest").read_text().strip() == f"step_{stopped:06d}"
    events = [r for r in metrics(run) if "event" in r]
    assert events[0]["parallel"] == "fsdp"
    assert (events[-1]["event"], events[-1]["signal"]) == ("interrupted", "SIGTERM")
    assert_close_curves(step_losses(run), step_losses(runs["ddp"]))  # sharded or not, the same training

    # The checkpoint holds whole tensors: one unsharded process continues it.
    assert in_this_process("pretrain", "--run", run, "--resume") == 0
    assert sorted(step_losses(run)) == list(range(1, STEPS + 1))
    assert_close_curves(step_losses(run), step_losses(runs["ddp"]))


def test_fsdp_with_one_process_shards_and_follows_the_curve_of_plain_training(runs, tmp_path, capsys):
    """torchrun --nproc_per_node 1 with fsdp=true shards for real (FSDP2 needs a process group, even of one);
    without torchrun fsdp=true says it cannot shard and trains as usual."""
    sharded = byte_level_run(tmp_path / "fsdp1")
    status, stderr = finish(torchrun("pretrain", "--run", sharded, *SETTINGS, "--set", "fsdp=true", processes=1))
    assert status == 0, stderr
    start = next(r for r in metrics(sharded) if r.get("event") == "start")
    assert (start["world"], start["parallel"]) == (1, "fsdp")
    assert_close_curves(step_losses(sharded), step_losses(runs["single"]))
    alone = byte_level_run(tmp_path / "alone")
    assert in_this_process("pretrain", "--run", alone, *SETTINGS, "--set", "fsdp=true", "--set", "steps=2") == 0
    assert "fsdp=true needs a start by torchrun" in capsys.readouterr().err
    assert next(r for r in metrics(alone) if r.get("event") == "start")["parallel"] == "none"


def test_a_batch_that_does_not_split_among_the_processes_is_refused():
    config = load_config("tiny", ["micro_batch=8"])  # 512 tokens = one micro-batch of 8 x 64
    assert config.accumulation(1) == 1
    with pytest.raises(UserError, match=r"not a multiple of micro_batch\*seq_len\*processes=8\*64\*2"):
        config.accumulation(2)


def test_without_torchrun_there_is_one_process(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    dist = distributed.setup("cpu")
    assert (dist.rank, dist.world, dist.is_main, dist.active) == (0, 1, True, False)
    assert dist.sum([1.5, 2.0]) == [1.5, 2.0] and dist.from_main("x") == "x" and dist.min(3) == 3
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(UserError, match="WORLD_SIZE"):
        distributed.setup("cpu")


def test_an_optimizer_state_saved_by_one_process_converts_to_names(tmp_path):
    """A checkpoint of one process or DDP (optimizer state by parameter number) continued under FSDP
    (state by parameter name): the conversion gives what PyTorch's own by-name export gives."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    from ownllm.model import ModelConfig, Transformer
    from ownllm.run import checkpoints
    from ownllm.train.optim import build_optimizer

    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=50, n_layers=2, d_model=32, n_heads=2, max_seq_len=16))
    optimizer = build_optimizer(model, 1e-3, 0.1, (0.9, 0.95), torch.device("cpu"))
    model(torch.randint(0, 50, (2, 8)), torch.randint(0, 50, (2, 8))).backward()
    optimizer.step()
    converted = checkpoints._keyed_by_name(optimizer.state_dict(), optimizer, model)
    reference = get_optimizer_state_dict(model, optimizer)
    assert converted["state"].keys() == reference["state"].keys() == dict(model.named_parameters()).keys()
    for name, state in reference["state"].items():
        assert all(torch.equal(state[k], converted["state"][name][k]) for k in ("exp_avg", "exp_avg_sq", "step"))
    assert [g["params"] for g in converted["param_groups"]] == [g["params"] for g in reference["param_groups"]]
