"""`ownllm eval`: the scorer (batched = naive), known answers, each task's shipped data, the command."""

from __future__ import annotations

import json
import math

import pytest
import torch

from helpers.runs import bpe_run, metrics, ownllm_here
from ownllm.eval import evaluate, scoring, tasks
from ownllm.model import ModelConfig, Transformer
from ownllm.tokenizer import Tokenizer

BYTES = Tokenizer([])  # one token per UTF-8 byte


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=BYTES.vocab_size, d_model=32, n_layers=2, n_heads=2, max_seq_len=128)
    return Transformer(config).eval()


def test_batched_scores_equal_one_at_a_time_on_real_items(model):
    """Real HellaSwag and PIQA items, of many lengths (padding, sorting, truncation to the context)."""
    items = tasks.hellaswag()[:6] + tasks.piqa()[:4]
    requests = [evaluate._requests(BYTES, item.context, c) for item in items for c in item.choices]
    assert any(len(c) + len(x) > 129 for c, x in requests)  # some are cut to the context, keeping their ending
    batched = scoring.score(model, requests, batch_size=5)
    naive = [scoring.score_one(model, c, x) for c, x in requests]
    assert batched == pytest.approx(naive, rel=1e-5, abs=1e-4)


def test_a_memorised_sentence_is_the_right_choice(model):
    """A model trained on one sentence: its second half is far more probable after the first than any other."""
    torch.manual_seed(0)
    memo = Transformer(ModelConfig(vocab_size=BYTES.vocab_size, d_model=32, n_layers=1, n_heads=2, max_seq_len=64))
    text = "The cat sat on the warm mat by the door."
    ids = [BYTES.eot_id, *BYTES.encode(text)]
    optimizer = torch.optim.Adam(memo.parameters(), lr=3e-2)
    for _ in range(200):
        loss = memo(torch.tensor([ids[:-1]]), torch.tensor([ids[1:]]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    memo.eval()
    item = tasks.Choice(
        "The cat sat on", [" the warm mat by the door.", " a cold rock.", " the door by the mat warm."], 0
    )
    result = evaluate.choice_task(memo, BYTES, [item, tasks.Choice(item.context, item.choices[::-1], 2)], 4)
    assert result["metrics"] == {"acc": 1.0, "acc_norm": 1.0} and result["items"] == 2
    pair = tasks.Pair(text, "The cat sat on the door mat by the warm.", "word_order")
    assert evaluate.pair_task(memo, BYTES, [pair], 2)["metrics"]["acc"] == 1.0


def test_accuracy_and_length_normalised_accuracy_on_known_scores(monkeypatch):
    """acc takes the highest total log-probability, acc_norm the highest per character of the choice."""
    monkeypatch.setattr(scoring, "score", lambda model, requests, batch_size, progress=None: [-4.0, -10.0, -9.0, -3.0])
    items = [tasks.Choice("Q", [" ab", " abcdefghi"], 0), tasks.Choice("Q", [" abcdefghi", " a"], 0)]
    result = evaluate.choice_task(None, BYTES, items, 4)
    # item 1: totals -4 vs -10 -> 0 (right); per char -4/3 vs -10/10 -> 1 (wrong)
    # item 2: totals -9 vs -3 -> 1 (wrong); per char -9/10 vs -3/2 -> 0 (right)
    assert result["metrics"] == {"acc": 0.5, "acc_norm": 0.5}
    assert result["baseline"] == 0.5 and result["stderr"]["acc"] == pytest.approx(0.5)


def test_wikitext_scores_every_token_once_with_half_a_context_before_it(model):
    text = "A short text. " * 40  # 560 bytes: several windows of 128
    result = evaluate.wikitext(model, BYTES, text)
    assert result["items"] == len(text.encode()) and result["stride"] == 64
    # the same text scored token by token with exactly that context
    ids = [BYTES.eot_id, *BYTES.encode(text)]
    nll, scored = 0.0, 0
    while scored < len(ids) - 1:
        end = min(scored + 64 if scored else 128, len(ids) - 1)
        start = max(0, end - 128)
        for j in range(scored + 1, end + 1):
            nll -= scoring.score_one(model, ids[start:j], [ids[j]])
        scored = end
    assert result["metrics"]["bits_per_byte"] == pytest.approx(nll / (len(text.encode()) * math.log(2)), rel=1e-4)
    words = len(text.split())
    assert result["metrics"]["word_perplexity"] == pytest.approx(math.exp(nll / words), rel=1e-3)


def test_the_shipped_task_data_loads_whole():
    counts = {"hellaswag": 10042, "arc_easy": 2376, "arc_challenge": 1170, "piqa": 1838}
    for name, n in counts.items():
        items = tasks.CHOICE_TASKS[name]()
        assert len(items) == n, name
        assert all(0 <= item.gold < len(item.choices) and item.context for item in items), name
    first = tasks.hellaswag()[0]
    assert first.context == "Roof shingle removal: A man is sitting on a roof. He"  # the second part capitalised
    assert first.choices[3] == " starts pulling up roofing on a roof." and first.gold == 3
    assert not any("[" in c for item in tasks.hellaswag()[:500] for c in [item.context, *item.choices])
    pairs = tasks.blimp()
    assert len(pairs) == 6700 and len({p.group for p in pairs}) == 67
    assert tasks.wikitext2().startswith(" = Robert Boulter = ")
    crows = tasks.crows_pairs()
    assert len(crows) == 1508 and len({p.group for p in crows}) == 9
    assert sum(p.group == "race-color" for p in crows) == 516


def test_ownllm_eval_writes_its_results_and_refuses_bad_input(tmp_path, capsys):
    run = bpe_run(tmp_path / "run")
    status, err = ownllm_here(capsys, "eval", "--run", run, "--tasks", "arc_easy")
    assert status == 2 and err.count("\n") == 1 and "no pretrain checkpoint" in err
    status, err = ownllm_here(
        capsys,
        "pretrain",
        "--run",
        run,
        "--preset",
        "tiny",
        "--set",
        "steps=3",
        "--set",
        "threads=1",
        "--set",
        "sample_every=0",
        "--set",
        "eval_every=0",
    )
    assert status == 0, err
    status, err = ownllm_here(capsys, "eval", "--run", run, "--tasks", "arc_easy,squadd")
    assert status == 2 and err.count("\n") == 1 and "unknown task squadd" in err
    assert not (run / "eval").exists()
    tasks_given = "val,wikitext2,piqa,blimp,crows_pairs"
    status, err = ownllm_here(capsys, "eval", "--run", run, "--limit", "3", "--tasks", tasks_given)
    assert status == 0, err
    saved = json.loads((run / "eval" / "pretrain-step_000003.json").read_text())
    assert saved["format"] == "ownllm.eval" and saved["step"] == 3 and saved["tasks"]["piqa"]["settings"]["limit"] == 3
    assert set(saved["tasks"]) == {"val", "wikitext2", "piqa", "blimp", "crows_pairs", "core"}
    bias = saved["tasks"]["crows_pairs"]
    assert set(bias["metrics"]) == {"stereotype_preference"} and bias["baseline"] == 0.5 and bias["items"] == 3
    assert saved["tasks"]["core"]["items"] == 2  # piqa and blimp: the bias probe is not an accuracy
    assert saved["tasks"]["piqa"]["items"] == 3 and saved["tasks"]["piqa"]["baseline"] == 0.5
    assert 0 < saved["tasks"]["val"]["metrics"]["bits_per_byte"] < 10
    # a second eval of the same checkpoint adds its tasks to the file; CORE covers them all
    status, err = ownllm_here(capsys, "eval", "--run", run, "--limit", "2", "--tasks", "arc_easy")
    assert status == 0, err
    merged = json.loads((run / "eval" / "pretrain-step_000003.json").read_text())["tasks"]
    assert set(merged) == {"val", "wikitext2", "piqa", "blimp", "crows_pairs", "arc_easy", "core"}
    assert merged["core"]["items"] == 3 and merged["arc_easy"]["settings"]["limit"] == 2


def test_benchmark_scores_during_pretraining(tmp_path, capsys):
    """eval_tasks adds the tasks' scores to every evaluation in metrics.jsonl (the same items each time)."""
    run = bpe_run(tmp_path / "run")
    settings = [
        "--preset",
        "tiny",
        "--set",
        "steps=4",
        "--set",
        "eval_every=2",
        "--set",
        "threads=1",
        "--set",
        "sample_every=0",
    ]
    status, err = ownllm_here(capsys, "pretrain", "--run", run, *settings, "--set", "eval_tasks=piqa,hellasweg")
    assert status == 2 and err.count("\n") == 1 and "unknown task hellasweg" in err
    status, err = ownllm_here(
        capsys, "pretrain", "--run", run, *settings, "--set", "eval_tasks=piqa,blimp", "--set", "eval_task_limit=4"
    )
    assert status == 0, err
    evaluations = [r for r in metrics(run) if "val_loss" in r]
    assert [r["step"] for r in evaluations] == [0, 2, 4]
    for record in evaluations:
        assert {"piqa_acc", "piqa_acc_norm", "blimp_acc", "core"} <= set(record)
        assert record["piqa_acc"] in (0.0, 0.25, 0.5, 0.75, 1.0)  # 4 items


def test_the_command_lists_the_tasks_the_library_has():
    """commands/eval.py keeps its own list (its --help must not import the library): it may not drift."""
    from ownllm.commands.eval import TASK_NAMES
    from ownllm.eval.chat_tasks import CHAT_TASKS

    assert TASK_NAMES == tasks.ALL_TASKS + CHAT_TASKS
