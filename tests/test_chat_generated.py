"""Generated conversations: deterministic, valid, mixed by weight, and each kind teaches what it should."""

from __future__ import annotations

import random
import re
from collections import Counter

import pytest

from ownllm.chatformat import GeneratedMix, Persona, calculate, generate_conversations, validate
from ownllm.chatformat.generated import GENERATORS, KINDS, _Context
from ownllm.chatformat.stories import TEMPLATE_ONLY, TOPICS, StoryIndex, split_stories, story_request
from ownllm.core.errors import UserError


def kind_of(conversation) -> str:
    """Which generator wrote a conversation, told from its content."""
    turns = [m for m in conversation if m["role"] != "system"]
    first = turns[0]["content"]
    if any(m["role"] == "tool" for m in turns):
        return "arithmetic"
    if "story" in first.lower() and "text" not in first.lower() and "Question" not in first:
        return "story"
    if len(first) > 80:
        return "passage"
    return "identity_or_small_talk"


def uses(text: str, word: str) -> int:
    return len(re.findall(rf"\b{re.escape(word)}\b", text, flags=re.IGNORECASE))


def only(kind: str, **settings) -> GeneratedMix:
    return GeneratedMix(weights={kind: 1.0}, **settings)


def test_same_seed_same_conversations_and_more_keeps_the_first_ones():
    first = generate_conversations(60, seed=7)
    assert first == generate_conversations(60, seed=7)
    assert generate_conversations(20, seed=7) == first[:20]
    assert generate_conversations(60, seed=8) != first


def test_every_generated_conversation_is_valid_and_ends_with_the_assistant():
    for conversation in generate_conversations(300, seed=1):
        assert validate(conversation, for_training=True) == conversation
        assert conversation[-1]["role"] == "assistant"


def test_the_mixture_weights_set_the_shares():
    mix = GeneratedMix(weights={"arithmetic": 3, "story": 1})
    kinds = Counter(kind_of(c) for c in generate_conversations(400, mix=mix, seed=0))
    assert set(kinds) == {"arithmetic", "story"}
    assert 0.65 < kinds["arithmetic"] / 400 < 0.85
    with_system = sum(c[0]["role"] == "system" for c in generate_conversations(400, mix=mix, seed=0))
    assert 0.4 < with_system / 400 < 0.6  # system_prompt_rate 0.5
    assert all(c[0]["role"] != "system" for c in generate_conversations(50, mix=only("story", system_prompt_rate=0)))


def test_identity_answers_with_the_configured_persona():
    persona = Persona(name="Wren", description="a tiny helper", creator="Ada")
    conversations = generate_conversations(200, persona=persona, mix=only("identity", system_prompt_rate=1.0))
    assert all(c[0] == {"role": "system", "content": "You are Wren, a tiny helper."} for c in conversations)
    name_answers = [
        c[i + 1]["content"]
        for c in conversations
        for i, m in enumerate(c)
        if m["role"] == "user" and "name" in m["content"].lower() and "Is your name" not in m["content"]
    ]
    assert len(name_answers) > 50
    assert all("Wren" in answer for answer in name_answers)
    assert not any("Pip" in m["content"] for c in conversations for m in c)
    made = [c[i + 1]["content"] for c in conversations for i, m in enumerate(c) if m["content"] == "Who made you?"]
    assert made and all(answer == "I was made by Ada." for answer in made)


def test_arithmetic_calls_the_calculator_and_answers_with_its_result():
    conversations = generate_conversations(300, mix=only("arithmetic", system_prompt_rate=0), seed=3)
    errors = 0
    for conversation in conversations:
        user, call, tool, answer = conversation
        expression = call["tool_call"]["arguments"]
        assert call["tool_call"]["name"] == "calculator" and call["content"] == ""
        assert tool["content"] == calculate(expression)  # the real calculator's result
        if tool["content"].startswith("error:"):
            errors += 1
            assert "divide by zero" in answer["content"] or "dividing by zero" in answer["content"]
        else:
            assert tool["content"] in answer["content"]
            numbers = re.findall(r"\d+(?:\.\d+)?", expression)
            asked = user["content"].replace("squared", "** 2")
            assert all(n in asked for n in numbers)  # the call uses the user's numbers
    assert 0 < errors < 30  # a few divisions by zero teach what an error result means


def test_story_requests_get_stories_that_use_every_asked_for_word():
    index = StoryIndex.bundled(150)
    rng = random.Random(0)
    from_tinystories = 0
    for _ in range(300):
        request = story_request(rng, index)
        for word in request.words:
            assert uses(request.request, word) >= 1
            assert uses(request.story, word) >= 1, (word, request.story)
        if request.story in index.stories:
            from_tinystories += 1
            topic = request.words[0]
            assert uses(request.story, topic) >= 2  # the topic is what the story is about
            if len(index.about_early[topic]) >= 3:  # ... from its start, where enough stories are
                assert re.search(rf"\b{topic}(s|es)?\b", " ".join(request.story.split()[:25]), re.IGNORECASE)
        assert len(request.story.split()) <= 150 and request.story.isascii()
    assert 200 < from_tinystories < 290  # mostly real stories, some from templates
    assert any(len(r.words) > 1 for r in (story_request(random.Random(i), index) for i in range(50)))


def test_a_story_about_a_cat_is_about_a_cat():
    conversations = generate_conversations(400, mix=only("story", system_prompt_rate=0), seed=5)
    cats = [c for c in conversations if c[0]["content"].endswith(("about a cat.", "about a cat?"))]
    assert cats
    assert all(uses(c[1]["content"], "cat") >= 1 for c in cats)


def test_multi_turn_conversations_ask_several_kinds_of_thing_and_stay_short():
    """Two or three requests of different kinds; a story comes last more often than not, and is short."""
    conversations = generate_conversations(300, mix=only("multi_turn", system_prompt_rate=0), seed=2)
    story_last = with_story = 0
    for conversation in conversations:
        assert validate(conversation, for_training=True) == conversation
        asked = [m["content"] for m in conversation if m["role"] == "user"]
        assert 2 <= len(asked) <= 3
        stories = [i for i, q in enumerate(asked) if "story" in q.lower()]
        assert len(stories) <= 1
        if stories:
            with_story += 1
            story_last += stories[0] == len(asked) - 1
            answer = conversation[[i for i, m in enumerate(conversation) if m["role"] == "user"][stories[0]] + 1]
            assert len(answer["content"].split()) <= 90
        assert sum(len(m["content"].split()) for m in conversation) < 180  # fits a 256-token context
    assert 150 < with_story < 280 and story_last > 0.6 * with_story
    assert sum(any("tool_call" in m for m in c) for c in conversations) > 100  # sums among the turns


def test_template_stories_can_use_words_no_story_contains():
    index = StoryIndex(split_stories("One day, a cat sat.\nA dog ran.\n"), max_words=150)
    assert index.topics() == []  # too few stories: every request falls back to a template
    request = story_request(random.Random(1), index)
    assert request.words[0] in TEMPLATE_ONLY or request.words[0] in TOPICS
    assert uses(request.story, request.words[0]) >= 2


def test_split_stories_follows_the_tinystories_layout():
    text = "First story, paragraph one.\n\nParagraph two.\nSecond story.\n\n\nIts second paragraph.\n"
    assert split_stories(text) == [
        "First story, paragraph one.\n\nParagraph two.",
        "Second story.\n\nIts second paragraph.",
    ]


# What the passage answers wrap around the fact: "Mia's cat is called Coco." -> "Coco"
ANSWER_FRAME = re.compile(
    r"^(The story is about |The \w+ is named |\w+'s \w+ is called "
    r"|\w+ (is|lives in|likes to eat|goes to the \w+( \w+)? every) )"
)


def test_passage_questions_are_answered_from_the_passage():
    conversations = generate_conversations(300, mix=only("passage", system_prompt_rate=0), seed=2)
    not_said = 0
    for conversation in conversations:
        passage_text = "\n".join(m["content"] for m in conversation if m["role"] == "user")
        answer = conversation[-1]["content"]
        if answer == "The text does not say.":
            not_said += 1
            continue
        # The key of the answer (a name, a place, a day...) is in the text given to the assistant.
        key = ANSWER_FRAME.sub("", answer).rstrip(".").removesuffix(" years old")
        assert key and key.split()[-1] in passage_text, (answer, passage_text)
    assert 10 < not_said < 90


def test_each_generator_is_deterministic_given_its_random_state():
    context = _Context(Persona(), GeneratedMix())
    for kind in KINDS:
        a = GENERATORS[kind](random.Random(42), context)
        b = GENERATORS[kind](random.Random(42), context)
        assert a == b and validate(a, for_training=True)


@pytest.mark.parametrize(
    "settings, problem",
    [
        ({"weights": {"poetry": 1}}, "unknown conversation kinds"),
        ({"weights": {"story": -1}}, "must be numbers >= 0"),
        ({"weights": {"story": 0}}, "at least one mixture weight"),
        ({"system_prompt_rate": 1.5}, "between 0 and 1"),
        ({"max_story_words": 10}, "at least 60"),
        ({"colour": "blue"}, "unknown mixture settings"),
    ],
)
def test_bad_mixture_settings_are_one_line_user_errors(settings, problem):
    with pytest.raises(UserError, match=problem):
        GeneratedMix.from_dict(settings)


def test_persona_settings_are_checked():
    assert Persona.from_dict({"name": "Wren"}).system_prompt().startswith("You are Wren, ")
    with pytest.raises(UserError, match="unknown persona settings"):
        Persona.from_dict({"nickname": "W"})
    with pytest.raises(UserError, match="persona name"):
        Persona(name="")
    with pytest.raises(UserError, match="longer than"):
        Persona(name="x" * 41)
