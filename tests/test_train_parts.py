"""The trainer's parts, one at a time: schedule, bits per byte, settings, data loader, checkpoints."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from helpers.runs import byte_level_run
from ownllm.core import device
from ownllm.core.bpb import bits_per_byte, perplexity
from ownllm.core.errors import UserError
from ownllm.model import ModelConfig, Transformer
from ownllm.run import checkpoints
from ownllm.run.token_shards import open_tokens
from ownllm.train.config import PRESETS, load_config, parse_duration
from ownllm.train.loader import BatchLoader, TokenStream, eval_batches
from ownllm.train.schedule import lr_at

# ---- precision on the CPU -------------------------------------------------------------------


def test_cpu_precision_is_fp32_unless_asked_whatever_the_timings(monkeypatch):
    """The choice may not depend on a measurement: where bf16 products time 100x faster, it still trains in fp32."""
    cpu = torch.device("cpu")
    monkeypatch.setattr(
        device, "measure_matmul_flops", lambda _device, dtype, **_: 100e9 if dtype == torch.bfloat16 else 1e9
    )
    for _ in range(3):
        chosen = device.choose_precision(cpu, "auto", agree=lambda name: pytest.fail(f"asked the others about {name}"))
        assert chosen.dtype == torch.float32 and "--set dtype=bf16" in chosen.describe()
    assert device.choose_precision(cpu, "bf16").dtype == torch.bfloat16
    with pytest.raises(UserError, match="fp16 training needs a CUDA GPU"):
        device.choose_precision(cpu, "fp16")


# ---- learning-rate schedule ------------------------------------------------------------------


def test_cosine_schedule_shape():
    lrs = [lr_at(s, 100, 1.0, warmup_steps=10, min_lr_ratio=0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)  # linear warm-up to the peak
    assert all(a < b for a, b in zip(lrs[:9], lrs[1:10]))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # then never increases
    assert lrs[55] == pytest.approx(0.55, abs=0.01)  # half-way through the decay: half-way down
    assert lrs[-1] == pytest.approx(0.1, abs=0.001)
    assert lr_at(100, 100, 1.0, 10, 0.1) == pytest.approx(0.1)


def test_wsd_schedule_holds_then_decays_linearly():
    lrs = [
        lr_at(s, 100, 1.0, warmup_steps=10, min_lr_ratio=0.0, schedule="wsd", decay_fraction=0.2) for s in range(101)
    ]
    assert lrs[9] == lrs[50] == lrs[80] == 1.0
    assert lrs[90] == pytest.approx(0.5)
    assert lrs[100] == pytest.approx(0.0)
    assert all(a >= b for a, b in zip(lrs[80:], lrs[81:]))


# ---- bits per byte -----------------------------------------------------------------------------


def test_bits_per_byte_arithmetic():
    # A uniform guess over 256 byte values, one byte per token, costs exactly 8 bits per byte.
    assert bits_per_byte(math.log(256), tokens=1000, text_bytes=1000) == pytest.approx(8.0)
    # The same loss per token spread over 4 bytes per token is a quarter of the bits per byte.
    assert bits_per_byte(math.log(256), tokens=1000, text_bytes=4000) == pytest.approx(2.0)
    assert bits_per_byte(math.log(2), tokens=3, text_bytes=3) == pytest.approx(1.0)
    assert perplexity(math.log(50)) == pytest.approx(50)
    assert perplexity(1e4) == math.inf
    with pytest.raises(ValueError):
        bits_per_byte(1.0, 10, 0)


# ---- settings ----------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_is_valid(preset):
    config = load_config(preset)
    assert config.batch_tokens % (config.micro_batch * config.seq_len) == 0
    assert config.seq_len <= config.model.max_seq_len


def test_gpu_small_is_gpt2_small_class():
    config = load_config("gpu-small")
    config.model.vocab_size = 50304
    with torch.device("meta"):  # shapes only, no memory
        model = Transformer(config.model)
    assert 120e6 < model.num_params() < 130e6  # GPT-2 small: 124M
    assert (config.model.n_layers, config.model.d_model, config.seq_len) == (12, 768, 1024)


def test_set_overrides_are_typed():
    config = load_config(
        "tiny",
        ["lr=3e-4", "n_layers=3", "model.qk_norm=yes", "steps=1e3", "n_kv_heads=none", "compile=false", "schedule=wsd"],
        time_budget="1m30s",
    )
    assert (config.lr, config.model.n_layers, config.model.qk_norm, config.steps) == (3e-4, 3, True, 1000)
    assert config.model.n_kv_heads is None and config.compile is False and config.schedule == "wsd"
    assert config.time_budget == 90.0


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["lr=fast"], "expected a number"),
        (["steps=2.5"], "whole number"),
        (["compile=maybe"], "true or false"),
        (["n_layer=3"], "did you mean model.n_layers"),
        (["lr"], "not key=value"),
        (["seq_len=128"], "position limit"),
        (["batch_tokens=1000"], "not a multiple"),
        (["n_heads=3"], "does not divide"),
        (["schedule=linear"], "not one of"),
        (["vocab_size=100"], "comes from the tokenizer"),
    ],
)
def test_bad_settings_are_one_line_user_errors(overrides, message):
    with pytest.raises(UserError, match=message) as info:
        load_config("tiny", overrides)
    assert "\n" not in str(info.value)


def test_durations():
    assert parse_duration("10m") == 600 and parse_duration("1h30m") == 5400 and parse_duration("45") == 45
    assert parse_duration("2.5m") == 150 and parse_duration("90s") == 90
    for bad in ("ten minutes", "10x", "-5", "5m10"):
        with pytest.raises(UserError):
            parse_duration(bad)


# ---- data loader -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    # Small shards, so that windows cross shard borders.
    root = byte_level_run(tmp_path_factory.mktemp("run"), train_bytes=30_000, val_bytes=5_000, shard_tokens=4096)
    return open_tokens(root / "tokens")


def test_stream_reads_across_shard_borders(shards):
    split = shards.split("train")
    assert len(split.shards) > 3
    stream = TokenStream(split)
    everything = np.concatenate([np.asarray(s) for s in split.shards])
    for start, end in [(0, 10), (4090, 4100), (4000, 9000), (stream.tokens - 5, stream.tokens)]:
        assert np.array_equal(stream.read(start, end), everything[start:end])


def test_targets_are_inputs_shifted_by_one(shards):
    loader = BatchLoader(shards.split("train"), seq_len=32, batch_size=4, seed=1, order="sequential")
    inputs, targets = loader.next_batch()
    assert inputs.shape == targets.shape == (4, 32) and inputs.dtype == torch.long
    assert torch.equal(inputs[:, 1:], targets[:, :-1])
    stream = TokenStream(shards.split("train"))
    assert torch.equal(inputs[1], torch.from_numpy(stream.read(32, 64)))  # sequential windows, in order


def test_random_order_is_deterministic_and_resumable(shards):
    split = shards.split("train")
    a = BatchLoader(split, seq_len=32, batch_size=4, seed=7)
    batches = [a.next_batch()[0] for _ in range(6)]
    b = BatchLoader(split, seq_len=32, batch_size=4, seed=7)
    assert all(torch.equal(x, b.next_batch()[0]) for x in batches)
    resumed = BatchLoader(split, seq_len=32, batch_size=4, seed=7)
    resumed.load_state_dict(a.state_dict() | {"batches": 3})
    assert all(torch.equal(x, resumed.next_batch()[0]) for x in batches[3:])
    other_seed = BatchLoader(split, seq_len=32, batch_size=4, seed=8)
    assert not torch.equal(batches[0], other_seed.next_batch()[0])


def test_an_epoch_visits_every_window_once(shards):
    split = shards.split("train")
    loader = BatchLoader(split, seq_len=64, batch_size=1, seed=3)
    starts = set()
    for n in range(loader.windows_per_epoch):
        window = loader.window(n)
        starts.add(bytes(window.astype(np.uint16)))
    assert len(starts) == loader.windows_per_epoch  # no window repeats within an epoch


def test_ranks_read_disjoint_windows(shards):
    split = shards.split("train")
    ranks = [BatchLoader(split, seq_len=32, batch_size=2, seed=5, rank=r, world=2) for r in range(2)]
    seen = [set(), set()]
    for _ in range(5):
        for r, loader in enumerate(ranks):
            for row in loader.next_batch()[0]:
                seen[r].add(bytes(row.numpy().astype(np.uint16)))
    assert not seen[0] & seen[1]


def test_loader_refuses_a_split_too_small_and_a_changed_layout(shards):
    with pytest.raises(UserError, match="too few"):
        BatchLoader(shards.split("val"), seq_len=10**6, batch_size=1)
    loader = BatchLoader(shards.split("train"), seq_len=32, batch_size=4)
    with pytest.raises(UserError, match="seq_len"):
        loader.load_state_dict(loader.state_dict() | {"seq_len": 64})


def test_eval_batches_are_fixed_and_capped(shards):
    batches = eval_batches(shards.split("val"), seq_len=32, batch_size=4, max_tokens=320, device="cpu")
    assert sum(t.numel() for _, t in batches) == 320
    again = eval_batches(shards.split("val"), seq_len=32, batch_size=4, max_tokens=320, device="cpu")
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))


# ---- checkpoints -------------------------------------------------------------------------------


def test_checkpoint_round_trip_keeps_the_last_k(tmp_path):
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=50, n_layers=1, d_model=32, n_heads=2, max_seq_len=16))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randint(0, 50, (2, 8)), torch.randint(0, 50, (2, 8))).backward()
    optimizer.step()
    stage = tmp_path / "checkpoints" / "pretrain"
    for step in (10, 20, 30):
        path = checkpoints.save_checkpoint(stage, step, model, optimizer, {"tokens": step * 100}, keep=2)
    assert sorted(p.name for p in stage.iterdir()) == ["latest", "step_000020", "step_000030"]
    assert checkpoints.latest_checkpoint(stage) == path
    assert checkpoints.read_state(path)["tokens"] == 3000
    restored = Transformer(model.config)
    checkpoints.load_weights(path, restored)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), restored.state_dict().values()))
    fresh_optimizer = torch.optim.AdamW(restored.parameters(), lr=1e-3)
    checkpoints.load_training_state(path, fresh_optimizer)
    moments = [s["exp_avg"] for s in fresh_optimizer.state_dict()["state"].values()]
    assert moments and all(
        torch.equal(a["exp_avg"], b) for a, b in zip(optimizer.state_dict()["state"].values(), moments)
    )
    assert checkpoints.latest_checkpoint(tmp_path) is None  # no stage directory: nothing to resume


def test_checkpoint_restores_random_state_exactly(tmp_path):
    model = Transformer(ModelConfig(vocab_size=50, n_layers=1, d_model=32, n_heads=2, max_seq_len=16))
    optimizer = torch.optim.AdamW(model.parameters())
    path = checkpoints.save_checkpoint(tmp_path, 1, model, optimizer, {})
    after_save = (torch.rand(4), np.random.rand(4))
    torch.rand(10), np.random.rand(10)
    checkpoints.load_training_state(path, optimizer)
    assert torch.equal(torch.rand(4), after_save[0]) and np.array_equal(np.random.rand(4), after_save[1])


def test_a_broken_latest_pointer_is_a_user_error(tmp_path):
    (tmp_path / "latest").write_text("step_000777\n")
    with pytest.raises(UserError, match="not a complete checkpoint"):
        checkpoints.latest_checkpoint(tmp_path)


def test_replan_moves_the_end_when_the_run_slows_down():
    from ownllm.train.trainer import replanned_total_steps

    # Planned 300 steps for 180 s at 0.55 s/step, but since step 20 (at 12 s) the run went at 0.75 s/step.
    new = replanned_total_steps(
        step=100, total=300, elapsed=72.0, mark_step=20, mark_elapsed=12.0, budget=180.0, eval_seconds=1.5
    )
    per_step = (72.0 - 12.0) / 80
    assert new == 100 + int((180.0 - 72.0 - 1.5 - 1.8) / per_step)
    assert 100 < new < 300
    # Ends on time: the remaining steps at the measured rate fit what is left of the budget.
    assert 72.0 + (new - 100) * per_step + 1.5 <= 180.0


def test_replan_leaves_an_accurate_plan_alone():
    from ownllm.train.trainer import replanned_total_steps

    # On pace: 300 steps at 0.5875 s/step from step 20 at 12 s fill the budget (less eval and margin).
    assert (
        replanned_total_steps(
            step=100, total=300, elapsed=59.0, mark_step=20, mark_elapsed=12.0, budget=180.0, eval_seconds=1.5
        )
        is None
    )
    # Too few steps since the mark to trust a rate.
    assert (
        replanned_total_steps(
            step=25, total=300, elapsed=30.0, mark_step=20, mark_elapsed=12.0, budget=180.0, eval_seconds=1.5
        )
        is None
    )
