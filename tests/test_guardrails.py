"""The guardrail: the blocklist matched as whole words and phrases, masking a reply while it streams, and
each action (flag, mask, refuse) in the reply loop, in `ownllm chat` and on both server routes, logged."""

from __future__ import annotations

import random
import shutil

import httpx
import pytest

from helpers import torch_threads
from helpers.chat import tiny_chat_run
from helpers.runs import ownllm_here, story_documents
from helpers.server import live_server
from ownllm.assistant.guardrails import REFUSAL, Guardrail, StreamMask
from ownllm.assistant.reply import reply
from ownllm.chatformat.template import ChatTemplate
from ownllm.inference.engine import Event, SamplingParams
from ownllm.server.settings import ServerSettings
from ownllm.tokenizer import train_bpe

GUARD = Guardrail.bundled("mask")


def test_entries_match_whole_words_and_phrases_only():
    assert GUARD.findings("You ASS!") == ["ASS"]
    assert GUARD.findings("a classic assessment in Scunthorpe, and a bass") == []  # never inside a word
    assert GUARD.findings("the ball\n gag and 2 girls 1 cup") == ["ball\n gag", "2 girls 1 cup"]
    assert GUARD.mask("you ass, the ball  gag") == "you ***, the ****  ***"  # same length, spaces kept
    assert Guardrail.bundled("off").findings("you ass") == []
    with pytest.raises(ValueError):
        Guardrail(["x"], "shout")


def test_a_streamed_reply_is_masked_exactly_and_shown_as_it_comes():
    text = "Hello there, you ass! The ball gag was a ball game, and 2 girls 1 cup; assessments follow."
    rng = random.Random(0)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(text)), k=rng.randint(1, 12)))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
        masker = StreamMask(GUARD)
        shown = [masker.feed(p) for p in pieces]
        assert "".join(shown) + masker.finish() == GUARD.mask(text)
    masker = StreamMask(GUARD)
    assert masker.feed("Hello there, my ") == "Hello there, my "  # nothing held back that cannot start a phrase
    assert masker.feed("ball ") == "" and masker.feed("game.") == "ball game."  # "ball" might have begun "ball gag"


class ScriptedEngine:
    """An engine that writes a fixed text (one token per event), and records the prompts it was given."""

    def __init__(self, template: ChatTemplate, text: str):
        self.template, self.text, self.prompts = template, text, []
        self.context_size = 512

    def stream(self, prompt_ids, params):
        self.prompts.append(prompt_ids)
        tokenizer = self.template.tokenizer
        for token in tokenizer.encode_ordinary(self.text):
            yield Event(tokenizer.decode([token]), [token])
        yield Event("", [self.template.end_of_turn_id], finish_reason="stop", stop_token=self.template.end_of_turn_id)


@pytest.fixture(scope="module")
def template() -> ChatTemplate:
    return ChatTemplate(train_bpe(story_documents(5_000), vocab_size=300, workers=1))


def events(template, text, message, action):
    engine = ScriptedEngine(template, text)
    guard = Guardrail.bundled(action)
    got = list(reply(engine, template, [{"role": "user", "content": message}], SamplingParams(), guardrail=guard))
    return engine, got


def test_each_action_in_the_reply_loop(template):
    engine, got = events(template, "I am fine, you ass.", "hello you ass", "mask")
    assert [(e.kind, e.finish_reason) for e in got if e.kind != "text"] == [
        ("guardrail", "input"),
        ("guardrail", "output"),
        ("done", "stop"),
    ]
    assert "".join(e.text for e in got if e.kind == "text") == "I am fine, you ***."
    assert got[-1].messages[0]["content"] == "I am fine, you ***."  # what is kept is masked too
    assert "<|user|>hello you ***<|end_of_turn|>" in template.tokenizer.decode(engine.prompts[0])  # seen masked
    engine, got = events(template, "never written", "hello you ass", "refuse")
    assert engine.prompts == [] and [e.text for e in got if e.kind == "text"] == [REFUSAL]
    assert got[-1].finish_reason == "content_filter"
    engine, got = events(template, "I am fine, you ass.", "hello you ass", "flag")
    assert "".join(e.text for e in got if e.kind == "text") == "I am fine, you ass."  # flagged, unchanged
    assert [(e.finish_reason, e.text) for e in got if e.kind == "guardrail"] == [("input", "ass"), ("output", "ass")]
    assert got[-1].messages[0]["content"] == "I am fine, you ass."  # reported, kept as written
    assert "you ass" in template.tokenizer.decode(engine.prompts[0])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run = tmp_path_factory.mktemp("guarded") / "run"
    shutil.copytree(tiny_chat_run(tmp_path_factory), run)
    return run


def test_ownllm_chat_refuses_and_says_why(run, capsys):
    capsys.readouterr()
    status, err = ownllm_here(capsys, "chat", "--run", run, "--guardrail", "refuse", "-p", "you ass")
    assert status == 0 and "(guardrail: 1 blocked word(s) in your message)" in err


def test_both_server_routes_apply_and_log_the_guardrail(run):
    with torch_threads(1), live_server(run, ServerSettings(guardrail="refuse")) as live:
        body = {"messages": [{"role": "user", "content": "hello you ass"}], "max_tokens": 4}
        answer = httpx.post(live.url + "/v1/chat/completions", json=body, timeout=60).json()
        assert answer["choices"][0]["message"]["content"] == REFUSAL
        assert answer["choices"][0]["finish_reason"] == "content_filter"
        api = httpx.Client(base_url=live.url + "/api", timeout=60)
        conversation = api.post("/conversations", json={}).json()["id"]
        with api.stream("POST", f"/conversations/{conversation}/messages", json={"content": "2 girls 1 cup"}) as r:
            streamed = r.read().decode()
        assert "event: guardrail" in streamed and REFUSAL in streamed
        log = live.app.state.store.guardrail_log("local")
        assert [(e["route"], e["direction"], e["findings"], e["action"]) for e in log] == [
            ("/v1/chat/completions", "input", "ass", "refuse"),
            ("/api", "input", "2 girls 1 cup", "refuse"),
        ]
