"""The assistant's reply: context trimming, and the tool loop on a real (tiny, trained) model."""

from __future__ import annotations

import time

import pytest

from helpers.chat import GREETING, GREETING_REPLY, SONG_REQUEST, SYSTEM, TOOL_ANSWER, TOOL_QUESTION, tiny_chat_run
from helpers.runs import story_documents
from ownllm.assistant.reply import ContextOverflow, fit_to_context, reply
from ownllm.chatformat.conversation import validate
from ownllm.chatformat.template import ChatTemplate
from ownllm.core.errors import UserError
from ownllm.inference.engine import Engine, Event, SamplingParams
from ownllm.tokenizer import train_bpe

GREEDY = SamplingParams(temperature=0, max_tokens=64)


@pytest.fixture(scope="module")
def template() -> ChatTemplate:
    return ChatTemplate(train_bpe(story_documents(5_000), vocab_size=300, workers=1))


def user(text):
    return {"role": "user", "content": text}


def assistant(text, call=None):
    message = {"role": "assistant", "content": text}
    if call:
        message["tool_call"] = {"name": "calculator", "arguments": call}
    return message


def long_chat():
    """system, then three exchanges (the first with a tool call), then the latest question."""
    return [
        {"role": "system", "content": "You are Pip."},
        user("What is 6 * 7?"),
        assistant("", call="6 * 7"),
        {"role": "tool", "content": "42"},
        assistant("6 * 7 = 42."),
        user("Tell me about the little dog who found a red ball in the park."),
        assistant("Once upon a time, a little dog found a red ball in the park and played all day."),
        user("And then?"),
        assistant("Then he went home and slept."),
        user("Thank you!"),
    ]


# ---- context trimming (no model needed) --------------------------------------------------------


def test_a_conversation_that_fits_is_kept_whole(template):
    chat = long_chat()
    size = len(template.render_prompt(chat))
    assert fit_to_context(template, chat, size) == (chat, 0)


def test_trimming_drops_the_oldest_exchange_first_with_its_tool_call_and_result(template):
    chat = long_chat()
    size = len(template.render_prompt(chat))
    kept, dropped = fit_to_context(template, chat, size - 1)
    # The first exchange is the question, the tool call, its result and the reply after it: 4 messages.
    assert (kept, dropped) == ([chat[0], *chat[5:]], 4)


@pytest.mark.parametrize("with_system", [True, False])
def test_every_budget_keeps_system_and_latest_message_and_drops_as_little_as_possible(template, with_system):
    chat = long_chat() if with_system else long_chat()[1:]
    head = chat[:1] if with_system else []
    exchange_starts = [i for i, m in enumerate(chat) if m["role"] == "user"]
    smallest = len(template.render_prompt(head + chat[exchange_starts[-1] :]))
    for budget in range(smallest, len(template.render_prompt(chat)) + 2):
        kept, dropped = fit_to_context(template, chat, budget)
        validate(kept)  # never a dangling tool result or a reply without its question
        assert kept[: len(head)] == head and kept[-1] == chat[-1]
        assert len(template.render_prompt(kept)) <= budget
        assert kept[len(head) :] == chat[len(chat) - len(kept) + len(head) :]  # a whole suffix of exchanges
        assert dropped == len(chat) - len(kept)
        assert chat.index(kept[len(head)]) in exchange_starts
        if dropped:  # keeping one more exchange would not have fit
            start = max(s for s in exchange_starts if s < len(head) + dropped)
            assert len(template.render_prompt(head + chat[start:])) > budget


def test_trimming_a_conversation_that_ends_with_a_tool_result_keeps_the_whole_last_exchange(template):
    # What the reply loop trims after a tool call: the latest exchange is question, call, result.
    chat = [
        {"role": "system", "content": "You are Pip."},
        user("Tell me a story."),
        assistant("Once upon a time, a dog found a ball."),
        user("What is 6 * 7?"),
        assistant("", call="6 * 7"),
        {"role": "tool", "content": "42"},
    ]
    kept, dropped = fit_to_context(template, chat, len(template.render_prompt(chat)) - 1)
    assert (kept, dropped) == ([chat[0], *chat[3:]], 2)


def test_overflow_when_the_system_prompt_and_latest_message_do_not_fit(template):
    chat = long_chat()
    needed = len(template.render_prompt([chat[0], chat[-1]]))
    with pytest.raises(ContextOverflow) as raised:
        fit_to_context(template, chat, needed - 1)
    assert isinstance(raised.value, UserError) and "\n" not in str(raised.value)
    assert (raised.value.prompt_tokens, raised.value.context_size) == (needed, needed - 1)


class ScriptedCaller:
    """An engine whose every generation calls the calculator, then (after the result) says `answer`."""

    def __init__(self, template: ChatTemplate, context_size: int, answer: str = "It is 84."):
        self.template, self.context_size, self.answer, self.prompts = template, context_size, answer, []

    def stream(self, prompt_ids, params):
        self.prompts.append(prompt_ids)
        encode = self.template.tokenizer.encode_ordinary
        t = self.template
        ids = [t.tool_call_id, *encode("calculator(12 * 7)")] if len(self.prompts) == 1 else encode(self.answer)
        for token in ids:
            yield Event(self.template.tokenizer.decode([token]), [token])
        yield Event("", [t.end_of_turn_id], finish_reason="stop", stop_token=t.end_of_turn_id)


@pytest.mark.parametrize("truncate", [False, True])
def test_a_tool_result_that_leaves_no_room_ends_the_reply_instead_of_failing(template, truncate):
    """The question fits; the model's own call and its result would not: the reply ends before the call."""
    question = [user("What is 12 * 7? " + "Please answer. " * 20)]
    params = SamplingParams(temperature=0, max_tokens=32)
    fits = len(template.render_prompt(question)) + 32  # exactly the prompt and the reply's room
    engine = ScriptedCaller(template, context_size=fits)
    events = list(reply(engine, template, question, params, truncate=truncate))
    assert [e.kind for e in events] == ["done"] and events[0].finish_reason == "length"
    assert events[0].messages == [assistant("")] and len(engine.prompts) == 1  # the call neither run nor kept
    validate(question + events[0].messages + [user("Thanks")])  # the history can go on
    roomy = ScriptedCaller(template, context_size=fits + 96)
    events = list(reply(roomy, template, question, params, truncate=truncate))
    assert [e.kind for e in events][:2] == ["tool_call", "tool_result"] and events[-1].messages[-1] == assistant(
        "It is 84."
    )


# ---- the reply loop on a model trained to answer the fixture's questions ------------------------


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    engine = Engine.load(tiny_chat_run(tmp_path_factory), device="cpu", max_slots=1)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def chat_template(engine) -> ChatTemplate:
    return ChatTemplate(engine.tokenizer)


def ask(question: str) -> list[dict]:
    return [{"role": "system", "content": SYSTEM}, user(question)]


def test_a_tool_call_runs_the_calculator_and_the_model_answers_with_its_result(engine, chat_template, one_torch_thread):
    events = list(reply(engine, chat_template, ask(TOOL_QUESTION), GREEDY))
    kinds = [e.kind for e in events]
    assert kinds[:2] == ["tool_call", "tool_result"] and kinds[-1] == "done"
    assert (events[0].text, events[1].text) == ("calculator(12 * 7)", "84")
    call = assistant("", call="12 * 7")
    assert events[1].messages == [call, {"role": "tool", "content": "84"}]
    text = "".join(e.text for e in events if e.kind == "text")
    assert text == TOOL_ANSWER  # the call's own text is never streamed as reply text
    done = events[-1]
    assert done.messages == [call, {"role": "tool", "content": "84"}, assistant(TOOL_ANSWER)]
    assert done.finish_reason == "stop" and done.dropped == 0
    assert done.prompt_tokens == len(chat_template.render_prompt(ask(TOOL_QUESTION) + done.messages[:2]))
    # Every generated token, each turn's <|end_of_turn|> included: the call turn, then the answer turn.
    call_turn = len(chat_template.render(ask(TOOL_QUESTION) + [call]).ids) - len(
        chat_template.render_prompt(ask(TOOL_QUESTION))
    )
    answer_turn = len(engine.tokenizer.encode_ordinary(TOOL_ANSWER)) + 1
    assert done.completion_tokens == call_turn + answer_turn


def test_text_streams_in_pieces_and_the_done_event_holds_the_message(engine, chat_template, one_torch_thread):
    events = list(reply(engine, chat_template, ask(GREETING), GREEDY))
    texts = [e.text for e in events if e.kind == "text"]
    assert len(texts) > 1 and "".join(texts) == GREETING_REPLY
    assert events[-1].messages == [assistant(GREETING_REPLY)]
    assert events[-1].completion_tokens == len(engine.tokenizer.encode(GREETING_REPLY)) + 1  # + <|end_of_turn|>


def test_after_max_tool_calls_a_further_call_ends_the_reply(engine, chat_template, one_torch_thread):
    events = list(reply(engine, chat_template, ask(TOOL_QUESTION), GREEDY, max_tool_calls=0))
    assert [e.kind for e in events] == ["done"]
    assert events[0].messages == [assistant("")] and events[0].finish_reason == "stop"


def test_a_call_cut_off_by_max_tokens_is_neither_run_nor_kept(engine, chat_template, one_torch_thread):
    events = list(reply(engine, chat_template, ask(TOOL_QUESTION), SamplingParams(temperature=0, max_tokens=4)))
    assert [e.kind for e in events] == ["done"]
    done = events[0]
    assert done.finish_reason == "length" and done.completion_tokens == 4
    assert done.messages == [assistant("")]
    validate(ask(TOOL_QUESTION) + done.messages + [user("Hello")])  # the history can go on


def test_max_tokens_bounds_the_whole_reply_tool_calls_included(engine, chat_template, one_torch_thread):
    # Room for the call turn and 2 tokens more: the answer after the tool result is cut short.
    call_turn = len(chat_template.render([*ask(TOOL_QUESTION), assistant("", call="12 * 7")]).ids) - len(
        chat_template.render_prompt(ask(TOOL_QUESTION))
    )
    events = list(
        reply(engine, chat_template, ask(TOOL_QUESTION), SamplingParams(temperature=0, max_tokens=call_turn + 2))
    )
    done = events[-1]
    assert done.finish_reason == "length" and done.completion_tokens == call_turn + 2
    assert [m["role"] for m in done.messages] == ["assistant", "tool", "assistant"]
    assert TOOL_ANSWER.startswith(done.messages[-1]["content"]) and done.messages[-1]["content"] != TOOL_ANSWER


def test_closing_the_reply_cancels_the_generation(engine, chat_template, one_torch_thread):
    events = reply(engine, chat_template, ask(SONG_REQUEST), SamplingParams(temperature=0, max_tokens=900))
    text = ""
    while "la la" not in text:
        text += next(events).text
    events.close()
    deadline = time.monotonic() + 10
    while engine.stats()["active"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.stats()["active"] == 0
    # The engine has one slot: a new reply gets it at once.
    assert list(reply(engine, chat_template, ask(GREETING), GREEDY))[-1].messages == [assistant(GREETING_REPLY)]


def test_a_long_history_is_trimmed_to_leave_room_for_the_reply(engine, chat_template, one_torch_thread):
    filler = "The little dog ran to the park and played with a big red ball all day long. " * 3
    chat = [{"role": "system", "content": SYSTEM}]
    for _ in range(20):
        chat += [user(filler), assistant(filler)]
    chat.append(user(GREETING))
    params = SamplingParams(temperature=0, max_tokens=100)
    done = list(reply(engine, chat_template, chat, params, max_tool_calls=0))[-1]  # one prompt only
    assert done.dropped > 0 and done.dropped % 2 == 0
    assert done.prompt_tokens <= engine.context_size - 100
    assert done.prompt_tokens == len(chat_template.render_prompt([chat[0], *chat[1 + done.dropped :]]))
    with pytest.raises(ContextOverflow):
        next(reply(engine, chat_template, chat, params, truncate=False))


def test_a_message_too_long_for_the_context_is_refused_in_one_line(engine, chat_template):
    with pytest.raises(ContextOverflow) as raised:
        next(reply(engine, chat_template, ask("la " * 2000), GREEDY))
    message = str(raised.value)
    assert f"the context holds {engine.context_size}, 64 of them kept for the reply" in message and "\n" not in message


def test_a_reply_answers_a_user_message(engine, chat_template):
    with pytest.raises(UserError, match="must end with a user message"):
        next(reply(engine, chat_template, [user("Hi"), assistant("Hello")], GREEDY))
