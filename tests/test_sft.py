"""Chat fine-tuning: the data (masks, cut and dropped conversations, held-out split), the loader
(resume, ranks) and `ownllm sft` end to end on a tiny pretrained run with a real BPE tokenizer."""

from __future__ import annotations

import itertools
import json
import shutil

import numpy as np
import pytest
import torch

from helpers.runs import SFT, TINY_CHAT_BASE, metrics, ownllm_here
from ownllm.chatformat import ChatTemplate, Persona
from ownllm.chatformat.sft_data import (
    Example,
    SFTLoader,
    SFTMixture,
    build_sft_data,
    content_hash,
    eval_batches,
    fit_example,
    load_mixture,
)
from ownllm.chatformat.template import IGNORE_INDEX
from ownllm.core.errors import UserError
from ownllm.run import RunDir
from ownllm.run.checkpoints import latest_checkpoint, read_state
from ownllm.tokenizer import Tokenizer

NO_BUNDLED = ["bundled.oasst=0", "bundled.dolly=0", "bundled.chatterbot=0"]


@pytest.fixture(autouse=True)
def keep_thread_count():
    """Training here sets PyTorch's thread count (threads=1); put it back for the tests that follow."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def template(tokenizer_run) -> ChatTemplate:
    return ChatTemplate(Tokenizer.load(tokenizer_run / "tokenizer"))


def exchanges(n: int, words: int = 6) -> list[dict]:
    conversation = [{"role": "system", "content": "You are Pip."}]
    for i in range(n):
        conversation += [
            {"role": "user", "content": f"Question {i}: " + "tell me more " * words},
            {"role": "assistant", "content": f"Answer {i}: " + "once upon a time " * words},
        ]
    return conversation


def synthetic_examples(n: int, seed: int = 0) -> list[Example]:
    """Rows of varied length whose first input token is the row's number (to find it in a batch)."""
    rng = np.random.default_rng(seed)
    examples = []
    for i in range(n):
        length = int(rng.integers(4, 60))
        inputs = np.arange(i, i + length, dtype=np.int32)
        targets = np.where(np.arange(length) % 3 == 0, IGNORE_INDEX, inputs + 1).astype(np.int32)
        examples.append(Example(inputs, targets))
    return examples


def row_ids(inputs: torch.Tensor) -> list[int]:
    return inputs[:, 0].tolist()


# ---- data ----------------------------------------------------------------------------------------


def test_targets_are_ignored_exactly_where_the_template_does_not_train_and_on_padding(template):
    conversations = [
        exchanges(2),
        [
            {"role": "user", "content": "What is 12 * 7?"},
            {"role": "assistant", "content": "", "tool_call": {"name": "calculator", "arguments": "12 * 7"}},
            {"role": "tool", "content": "84"},
            {"role": "assistant", "content": "12 * 7 = 84."},
        ],
        [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello."}],
    ]
    examples = [fit_example(template, c, seq_len=256)[0] for c in conversations]
    loader = SFTLoader(examples, seq_len=256, batch_size=3, pad_id=template.end_of_turn_id)
    inputs, targets = loader.next_batch()
    assert inputs.dtype == targets.dtype == torch.int64 and inputs.shape == targets.shape
    assert inputs.shape[0] == 3 and inputs.shape[1] <= 256
    for row in range(3):
        (conversation,) = [c for c in conversations if template.render(c).ids[:5] == inputs[row, :5].tolist()]
        rendered = template.render(conversation)
        n = len(rendered) - 1
        assert inputs[row, :n].tolist() == rendered.ids[:-1]
        expected = [t if m else IGNORE_INDEX for t, m in zip(rendered.ids[1:], rendered.mask[1:])]
        assert targets[row, :n].tolist() == expected
        assert (targets[row, n:] == IGNORE_INDEX).all()  # padding is never trained
        assert (inputs[row, n:] == template.end_of_turn_id).all()
        # what is trained: the assistant's words, its call and its end-of-turn, nothing of the user's
        trained = [t for t in expected if t != IGNORE_INDEX]
        assert template.tokenizer.decode(trained).count("Question") == 0
        assert trained[-1] == template.end_of_turn_id


def test_long_conversations_are_cut_after_an_assistant_turn_or_dropped(template):
    conversation = exchanges(4)
    full = template.render(conversation)
    turn_ends = [i + 1 for i, (t, m) in enumerate(zip(full.ids, full.mask)) if m and t == template.end_of_turn_id]
    assert len(turn_ends) == 4
    seq_len = turn_ends[2] + 3  # three replies fit, the fourth does not
    example, how = fit_example(template, conversation, seq_len)
    assert how == "cut" and len(example.inputs) == turn_ends[2] - 1
    assert example.inputs.tolist() == full.ids[: turn_ends[2] - 1]
    assert example.targets[-1] == template.end_of_turn_id  # it ends where a reply ends

    whole, how = fit_example(template, conversation, len(full) - 1)
    assert how == "whole" and len(whole.inputs) == len(full) - 1

    first_reply_too_long = [
        {"role": "user", "content": "Tell me a story."},
        {"role": "assistant", "content": "once upon a time " * 80},
    ]
    assert fit_example(template, first_reply_too_long, seq_len) == (None, "dropped")


def test_the_counts_of_each_source_say_what_was_kept_cut_and_dropped(template, tmp_path):
    lines = [
        exchanges(1),
        exchanges(4),
        exchanges(12),
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "hi " * 400}],
    ]
    data_file = tmp_path / "mine.jsonl"
    data_file.write_text("".join(json.dumps({"messages": m}) + "\n" for m in lines) + "not json\n")
    mixture = load_mixture(overrides=["generated=0", "held_out=0", *NO_BUNDLED], data_files=[data_file])
    data = build_sft_data(mixture, template, seq_len=len(template.render(exchanges(4))) - 1)
    (counts,) = data.sources
    assert (counts.loaded, counts.whole, counts.cut, counts.dropped, counts.train) == (4, 2, 1, 1, 3)
    summary = "\n".join(data.summary())
    assert "mine.jsonl 4 (2 whole, 1 cut, 1 dropped; 3 train, 0 held out)" in summary
    assert "mine.jsonl:5: not JSON" in summary  # the loader's report of the malformed line


def test_held_out_split_is_deterministic_and_disjoint(template):
    mixture = load_mixture(
        overrides=["generated=400", "held_out=0.2", "bundled.chatterbot=40", "bundled.oasst=0", "bundled.dolly=0"]
    )
    first, again = build_sft_data(mixture, template, 256), build_sft_data(mixture, template, 256)
    assert first.fingerprint == again.fingerprint
    assert [e.inputs.tolist() for e in first.held_out] == [e.inputs.tolist() for e in again.held_out]
    train = {tuple(e.inputs.tolist()) for e in first.train}
    held = {tuple(e.inputs.tolist()) for e in first.held_out}
    assert len(held) >= 20 and not train & held  # copies of a conversation land on the same side
    assert sum(s.held_out for s in first.sources) == len(first.held_out)
    # the side depends on the content only
    conversation = exchanges(1)
    same = fit_example(template, json.loads(json.dumps(conversation)), 256)[0]
    assert content_hash(fit_example(template, conversation, 256)[0]) == content_hash(same)
    assert content_hash(same) != content_hash(fit_example(template, exchanges(2), 256)[0])


def test_mixture_from_a_toml_file_with_overrides(tmp_path):
    (tmp_path / "chats.jsonl").write_text(json.dumps({"messages": exchanges(1)}) + "\n")
    path = tmp_path / "mix.toml"
    path.write_text(
        'generated = 1000\nfiles = ["chats.jsonl"]\n[bundled]\nchatterbot = 50\n'
        '[generated_mix.weights]\nidentity = 1\narithmetic = 2\n[persona]\nname = "Ada"\n'
    )
    mixture = load_mixture(path, ["generated=2000", "generated_mix.system_prompt_rate=0.25"], persona_name="Bo")
    assert mixture.generated == 2000 and mixture.bundled == {**SFTMixture().bundled, "chatterbot": 50}
    assert mixture.generated_mix.weights == {**SFTMixture().generated_mix.weights, "identity": 1, "arithmetic": 2}
    assert mixture.generated_mix.system_prompt_rate == 0.25
    assert mixture.persona == Persona(name="Bo")
    assert mixture.files == (str(tmp_path / "chats.jsonl"),)
    assert SFTMixture.from_dict(mixture.to_dict()) == mixture
    for bad, message in (
        (["generated=many"], "whole number"),
        (["bundled.reddit=5"], "unknown bundled"),
        (["held_out=0.9"], "between 0 and 0.5"),
        (["colour=red"], "unknown sft mixture"),
        (["generated_mix.weights.poetry=1"], "unknown conversation kinds"),
        (["files=chats.jsonl"], "list of paths"),
    ):
        with pytest.raises(UserError, match=message):
            load_mixture(overrides=bad)


# ---- the loader ----------------------------------------------------------------------------------


def test_an_epoch_visits_every_conversation_once_in_batches_of_similar_length():
    examples = synthetic_examples(SFTLoader.BUCKET_BATCHES * 8)  # one chunk of batches of 8
    loader = SFTLoader(examples, seq_len=64, batch_size=8, seed=3, pad_id=0)
    seen, widths = [], []
    for _ in range(SFTLoader.BUCKET_BATCHES):
        inputs, _ = loader.next_batch()
        seen += row_ids(inputs)
        widths.append(inputs.shape[1])
        assert inputs.shape[1] % SFTLoader.WIDTH_MULTIPLE == 0 or inputs.shape[1] == 64
    assert sorted(seen) == list(range(len(examples)))
    assert min(widths) < 64  # short rows are not padded to seq_len
    mean_length = np.mean([len(e.inputs) for e in examples])
    assert np.mean(widths) < 1.5 * mean_length + SFTLoader.WIDTH_MULTIPLE


def test_a_restored_loader_continues_with_the_same_batches():
    examples = synthetic_examples(50)
    first = SFTLoader(examples, seq_len=64, batch_size=4, seed=7, pad_id=0, fingerprint="abc")
    for _ in range(23):  # past the first chunk of batches and past an epoch
        first.next_batch()
    state = json.loads(json.dumps(first.state_dict()))  # it travels through state.json
    expected = [first.next_batch() for _ in range(20)]
    second = SFTLoader(examples, seq_len=64, batch_size=4, seed=7, pad_id=0, fingerprint="abc")
    second.load_state_dict(state)
    for (inputs, targets), (again_inputs, again_targets) in zip(expected, (second.next_batch() for _ in range(20))):
        assert torch.equal(inputs, again_inputs) and torch.equal(targets, again_targets)
    other_data = SFTLoader(examples[:-1], seq_len=64, batch_size=4, seed=7, pad_id=0, fingerprint="abd")
    with pytest.raises(UserError, match="cannot resume"):
        other_data.load_state_dict(state)


def test_ranks_take_disjoint_rows_of_each_global_batch():
    examples = synthetic_examples(90)
    whole = SFTLoader(examples, seq_len=64, batch_size=6, seed=1, pad_id=0)
    ranks = [SFTLoader(examples, seq_len=64, batch_size=2, seed=1, pad_id=0, rank=r, world=3) for r in range(3)]
    for _ in range(40):
        global_rows = row_ids(whole.next_batch()[0])
        parts = [row_ids(loader.next_batch()[0]) for loader in ranks]
        assert sorted(itertools.chain(*parts)) == sorted(global_rows)
        assert all(parts[r] == global_rows[r::3] for r in range(3))


def test_held_out_batches_hold_each_conversation_once_padded_to_their_longest():
    examples = synthetic_examples(21)
    batches = eval_batches(examples, batch_size=4, pad_id=0, device="cpu")
    assert sorted(itertools.chain(*(row_ids(inputs) for inputs, _ in batches))) == list(range(21))
    for inputs, _targets in batches:
        lengths = [len(examples[i].inputs) for i in row_ids(inputs)]
        assert inputs.shape[1] == max(lengths)
    trained = sum(int((t != IGNORE_INDEX).sum()) for _, t in batches)
    assert trained == sum(e.trained for e in examples)


# ---- the command ---------------------------------------------------------------------------------


def test_sft_trains_from_the_pretrained_model_and_saves_chat_checkpoints(pretrained_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(pretrained_run, run)
    status, err = ownllm_here(
        capsys,
        "sft",
        "--run",
        run,
        *SFT,
        "--persona-name",
        "Ada",
        "--set",
        "steps=6",
        "--set",
        "eval_every=3",
        "--set",
        "checkpoint_every=3",
        "--set",
        "sample_every=6",
        "--set",
        "sample_tokens=8",
    )
    assert status == 0, err
    assert "sft data: " in err and "generated 160 (" in err
    latest = latest_checkpoint(run / "checkpoints" / "sft")
    assert latest.name == "step_000006" and (run / "checkpoints" / "pretrain" / "latest").exists()
    state = read_state(latest)
    assert state["persona"]["name"] == "Ada"
    assert state["base_checkpoint"] == "checkpoints/pretrain/step_000004"
    assert state["tokenizer_hash"] == read_state(latest_checkpoint(run / "checkpoints" / "pretrain"))["tokenizer_hash"]
    records = [r for r in metrics(run) if r.get("stage") == "sft"]
    assert [r["step"] for r in records if "val_loss" in r] == [0, 3, 6]
    assert all(np.isfinite(r["val_loss"]) for r in records if "val_loss" in r)
    (samples,) = [r["samples"] for r in records if "samples" in r]
    assert [s.split(" -> ")[0] for s in samples] == [
        "What is your name?",
        "What is 12 * 7?",
        "Tell me a story about a cat.",
    ]
    config = RunDir(run).read_config()["sft"]
    assert config["mixture"]["persona"]["name"] == "Ada" and config["lr"] == 1e-3

    # it refuses to overwrite, resumes with its own data, and refuses to resume with other data
    status, err = ownllm_here(capsys, "sft", "--run", run, *SFT)
    assert status == 2 and "--resume" in err
    status, err = ownllm_here(capsys, "sft", "--run", run, "--resume", "--set", "steps=8", "--set", "sample_every=0")
    assert status == 0, err
    assert latest_checkpoint(run / "checkpoints" / "sft").name == "step_000008"
    status, err = ownllm_here(capsys, "sft", "--run", run, "--resume", "--set", "sft.generated=10")
    assert status == 2 and "keeps its data" in err


def test_user_mistakes_are_one_line_errors(tokenizer_run, pretrained_run, tmp_path, capsys):
    status, err = ownllm_here(capsys, "sft", "--run", tokenizer_run, *SFT)
    assert status == 2 and err.count("\n") == 1 and "ownllm pretrain" in err

    run = tmp_path / "run"
    shutil.copytree(pretrained_run, run)
    (tmp_path / "bad.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}]}\nnot json\n')
    for args, message in (
        (["--data", tmp_path / "missing.jsonl"], "not found"),
        (["--data", tmp_path / "bad.jsonl"], "no usable messages conversations"),
        (["--mixture", tmp_path / "missing.toml"], "mixture file not found"),
        (["--set", "sft.held_out=2"], "held_out"),
        (["--set", "model.n_layers=5"], "keeps the pretrained model's shape"),
    ):
        status, err = ownllm_here(capsys, "sft", "--run", run, *SFT, *args)
        assert status == 2, err
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not (run / "checkpoints" / "sft").exists()

    (run / "tokenizer" / "tokenizer.json").write_text((run / "tokenizer" / "tokenizer.json").read_text() + " ")
    status, err = ownllm_here(capsys, "sft", "--run", run, *SFT)
    assert status == 2 and "not the tokenizer the model was trained with" in err


def test_a_chat_model_whose_base_model_was_retrained_is_refused(pretrained_run, tmp_path, capsys):
    """After `pretrain --restart` the chat model belongs to a base model the run no longer has: every command
    that would load it (here the resolver, Engine.load and `ownllm chat`) refuses, naming the fix; the base model
    itself still loads. Same step name before and after: only the checkpoint's id tells them apart."""
    from ownllm.core.errors import StaleArtifactError
    from ownllm.run.models import resolve_model

    run = tmp_path / "run"
    shutil.copytree(pretrained_run, run)
    status, err = ownllm_here(capsys, "sft", "--run", run, *SFT, "--set", "steps=2", "--set", "sample_every=0")
    assert status == 0, err
    assert resolve_model(run).stage == "sft"
    pretrain = ["pretrain", "--run", run, *TINY_CHAT_BASE]  # as the pretrained_run fixture made it
    status, err = ownllm_here(capsys, *pretrain, "--restart")
    assert status == 0, err
    assert latest_checkpoint(run / "checkpoints" / "pretrain").name == "step_000004"  # the same name as before
    with pytest.raises(StaleArtifactError, match=r"fine-tuned from checkpoints/pretrain/step_000004.*--restart"):
        resolve_model(run)
    status, err = ownllm_here(capsys, "chat", "--run", run, "-p", "hi", "--device", "cpu")
    assert status == 2 and err.count("\n") == 1 and f"ownllm sft --run {run} --restart" in err
    assert resolve_model(run, stage="pretrain").stage == "pretrain"

    # checkpoints written before ids existed are compared by name: the same name passes, another does not
    sft = latest_checkpoint(run / "checkpoints" / "sft")
    state = json.loads((sft / "state.json").read_text())
    del state["base_id"]
    (sft / "state.json").write_text(json.dumps(state))
    assert resolve_model(run).stage == "sft"
    state["base_checkpoint"] = "checkpoints/pretrain/step_000003"
    (sft / "state.json").write_text(json.dumps(state))
    with pytest.raises(StaleArtifactError):
        resolve_model(run)
