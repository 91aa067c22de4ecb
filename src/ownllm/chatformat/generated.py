"""Generated conversations that teach a small model the assistant's skills.

A few hundred real conversations teach the chat format but not who the assistant is or
how to use its tools. These generators write as many conversations as wanted, of seven
kinds, mixed by weight and reproducible from a seed:

| kind         | the user                                   | the assistant                                    |
|--------------|--------------------------------------------|--------------------------------------------------|
| `identity`   | asks its name, what it is, who made it     | answers from the persona (name, description)     |
| `small_talk` | greets, thanks, says goodbye, asks how it is | answers briefly and kindly                      |
| `arithmetic` | asks "What is 12 * 7?" (also in words)     | calls calculator(12 * 7), reads 84, says 84      |
| `story`      | asks for a story about a cat               | tells a short story that uses the asked-for words |
| `passage`    | gives a short text and asks about it       | answers from the text (or says it does not say)  |
| `search`     | asks about a made-up person, no text given | calls search(old Mia), answers citing mia.txt    |
| `multi_turn` | two or three of: its name, small talk, a sum, a story, one after another | answers each as above |

Without `multi_turn` every conversation asks one kind of thing, and a small model learns that the
next answer looks like the last one: asked for a story after a sum, it answered "The answer is
27." (chat_multi_turn measured 0 of 20 stories). Its stories are short (at most 90 words) so that
three turns fit the demo model's 256-token context.

Tool results are computed by the real calculator, so the data never disagrees with it; search
results are written by the same `format_passages` as the runtime search tool (chatformat/tools.py).
Arithmetic never draws a held-out whole number (`held_out`: one in eight from 21 up, by a
fixed hash): `ownllm eval` asks about those, so a right answer was not remembered.
Conversation `i` of seed `s` depends on `(s, i)` only: asking for more conversations
keeps the first ones unchanged.
"""

from __future__ import annotations

import random
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

from ownllm.chatformat.calculator import calculate, is_error
from ownllm.chatformat.conversation import Conversation
from ownllm.chatformat.persona import Persona
from ownllm.chatformat.stories import StoryIndex, story_request
from ownllm.chatformat.tools import NO_KNOWLEDGE_BASE, NO_PASSAGE, SEARCH, Passage, format_passages
from ownllm.core.errors import UserError
from ownllm.core.settings import dataclass_from_dict

# Recorded in chat checkpoints. 2: arithmetic leaves out the held-out numbers (so a model trained on
# version 1 data may have seen the numbers `ownllm eval` asks about). 3: the `search` kind. 4: `multi_turn`.
GENERATED_VERSION = 4
KINDS = ("identity", "small_talk", "arithmetic", "story", "passage", "search", "multi_turn")
DEFAULT_WEIGHTS = {
    "identity": 0.1,
    "small_talk": 0.1,
    "arithmetic": 0.26,  # the calculator is the skill a small model learns last: it keeps most of its share
    "story": 0.2,
    "passage": 0.12,
    "search": 0.08,
    "multi_turn": 0.14,
}
MULTI_TURN_STORY_WORDS = 90


@dataclass(frozen=True)
class GeneratedMix:
    """The mixture config: how much of each kind, and how long texts may be."""

    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    system_prompt_rate: float = 0.5  # share of conversations that start with the persona's system prompt
    max_story_words: int = 150  # stories and passages must fit the model's context with room for the prompt
    max_passage_words: int = 120

    def __post_init__(self):
        unknown = set(self.weights) - set(KINDS)
        if unknown:
            raise UserError(f"unknown conversation kinds {sorted(unknown)} in the mixture; known: {', '.join(KINDS)}")
        if any(not isinstance(w, (int, float)) or w < 0 for w in self.weights.values()):
            raise UserError(f"mixture weights must be numbers >= 0, got {self.weights}")
        if sum(self.weights.values()) <= 0:
            raise UserError("at least one mixture weight must be positive")
        if not 0 <= self.system_prompt_rate <= 1:
            raise UserError(f"system_prompt_rate={self.system_prompt_rate} must be between 0 and 1")
        if min(self.max_story_words, self.max_passage_words) < 60:
            raise UserError("max_story_words and max_passage_words must be at least 60 (few stories are shorter)")

    @classmethod
    def from_dict(cls, d: dict) -> GeneratedMix:
        return dataclass_from_dict(cls, d, "mixture")


def generate_conversations(
    count: int, persona: Persona | None = None, mix: GeneratedMix | None = None, seed: int = 0
) -> list[Conversation]:
    """`count` conversations drawn from the mixture; the same arguments give the same conversations."""
    persona, mix = persona or Persona(), mix or GeneratedMix()
    kinds = [k for k in KINDS if mix.weights.get(k, 0) > 0]
    weights = [mix.weights[k] for k in kinds]
    context = _Context(persona, mix)
    conversations = []
    for i in range(count):
        rng = random.Random(f"ownllm.chatformat.generated:{seed}:{i}")  # str seeds are hashed the same on every run
        kind = rng.choices(kinds, weights)[0]
        conversations.append(generate_one(kind, rng, context))
    return conversations


def generate_one(kind: str, rng: random.Random, context: _Context) -> Conversation:
    conversation = GENERATORS[kind](rng, context)
    if rng.random() < context.mix.system_prompt_rate:
        conversation = [{"role": "system", "content": context.persona.system_prompt()}, *conversation]
    return conversation


class _Context:
    """What the generators share: the persona, the mixture, and (built on first use) the stories."""

    def __init__(self, persona: Persona, mix: GeneratedMix):
        self.persona = persona
        self.mix = mix
        self._stories: StoryIndex | None = None
        self._named: list[tuple[str, re.Match]] | None = None

    @property
    def stories(self) -> StoryIndex:
        if self._stories is None:
            self._stories = StoryIndex.bundled(self.mix.max_story_words)
        return self._stories

    @property
    def short_stories(self) -> StoryIndex:
        """Stories short enough to follow other turns in one conversation (multi_turn)."""
        return StoryIndex.bundled(min(MULTI_TURN_STORY_WORDS, self.mix.max_story_words))

    @property
    def named_characters(self) -> list[tuple[str, re.Match]]:
        """Short stories that introduce "a little girl named Lily", with that match."""
        if self._named is None:
            self._named = [
                (story, match)
                for story in self.stories.stories
                if len(story.split()) <= self.mix.max_passage_words and (match := _NAMED.search(story))
            ]
        return self._named


def _user(text: str) -> dict:
    return {"role": "user", "content": text}


def _assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


# identity ------------------------------------------------------------------------------------


def identity(rng: random.Random, context: _Context) -> Conversation:
    p = context.persona
    name_questions = (
        "What is your name?",
        "What's your name?",
        "Who are you?",
        "What should I call you?",
        "Do you have a name?",
        "Tell me your name.",
        "what is your name",
    )
    exchanges = [
        (
            rng.choice(name_questions),
            rng.choice(
                (
                    f"My name is {p.name}.",
                    f"I am {p.name}.",
                    f"I'm {p.name}, {p.description}.",
                    f"You can call me {p.name}.",
                )
            ),
        ),
        (
            rng.choice(("Tell me about yourself.", "Introduce yourself.", "What are you?")),
            f"I am {p.name}, {p.description}. I can chat, tell short stories, answer questions about a text "
            f"you give me, and do arithmetic with my calculator.",
        ),
        (rng.choice(("Who made you?", "Who created you?", "Who trained you?")), f"I was made by {p.creator}."),
        (
            rng.choice(("Are you a human?", "Are you a person?")),
            f"No, I am not a human. I am {p.name}, {p.description}.",
        ),
        (
            rng.choice(("Are you ChatGPT?", "Are you Siri?", "Are you ChatterBot?", "Are you Alexa?")),
            f"No, I am {p.name}, {p.description}.",
        ),
        (rng.choice((f"Is your name {p.name}?", f"Are you {p.name}?")), f"Yes, I am {p.name}."),
    ]
    weights = (5, 1, 1, 1, 1, 1)
    first = rng.choices(exchanges, weights)[0]
    if rng.random() < 0.2:  # greeted first: "Hi! What's your name?"
        greeting = rng.choice(("Hi!", "Hello!", "Hey."))
        conversation = [_user(f"{greeting} {first[0]}"), _assistant(f"Hello! {first[1]}")]
    else:
        conversation = [_user(first[0]), _assistant(first[1])]
    if rng.random() < 0.3:
        follow = rng.choice([e for e in exchanges if e is not first])
        conversation += [_user(follow[0]), _assistant(follow[1])]
    return conversation


# small talk ----------------------------------------------------------------------------------

_SMALL_TALK = (
    (
        ("Hi", "Hello", "Hi!", "Hello!", "Hey", "hi", "Hello there!"),
        ("Hello! How can I help you today?", "Hi! What can I do for you?", "Hello! What would you like to talk about?"),
    ),
    (("Good morning!", "Good morning"), ("Good morning! How can I help you?", "Good morning to you too!")),
    (("Good evening!", "Good evening"), ("Good evening! How can I help?", "Good evening to you too!")),
    (("Good night!", "Good night"), ("Good night! Sleep well.", "Good night! Sweet dreams.")),
    (
        ("How are you?", "How are you doing?", "How is it going?", "how are you"),
        ("I'm doing well, thank you! How are you?", "I'm fine, thanks for asking. How can I help?"),
    ),
    (
        ("I'm fine, thanks.", "I am good.", "Great, thank you!"),
        ("Glad to hear it! What would you like to do?", "That's nice to hear."),
    ),
    (
        ("I'm sad today.", "I feel a bit sad."),
        ("I'm sorry you feel sad. Would you like to talk about it, or shall I tell you a story?",),
    ),
    (
        ("Thank you!", "Thanks!", "Thanks a lot.", "thank you"),
        ("You're welcome!", "You're welcome! Happy to help.", "Any time!"),
    ),
    (("Bye!", "Goodbye!", "See you later.", "bye"), ("Goodbye! Have a nice day.", "Bye! Come back any time.")),
    (
        ("What can you do?", "How can you help me?", "What are you good at?"),
        (
            "I can chat with you, tell you a short story, answer a question about a text you give me, "
            "and do arithmetic with my calculator.",
        ),
    ),
    (
        ("Tell me a joke.", "Say something funny."),
        (
            "Why did the cat sit on the computer? To keep an eye on the mouse!",
            "What do you call a sleeping dinosaur? A dino-snore!",
        ),
    ),
    (("Do you like stories?", "Do you like books?"), ("Yes! I know many short stories. Would you like to hear one?",)),
    (
        ("You are nice.", "I like you.", "You're great!"),
        ("Thank you! That's kind of you.", "Thank you, you are nice too!"),
    ),
)


def small_talk(rng: random.Random, context: _Context) -> Conversation:
    conversation: Conversation = []
    for pair in rng.sample(_SMALL_TALK, k=rng.choice((1, 1, 2, 3))):
        says, answers = pair
        conversation += [_user(rng.choice(says)), _assistant(rng.choice(answers))]
    return conversation


# arithmetic ----------------------------------------------------------------------------------

_OPERATOR_WORDS = {
    "+": ("plus", "+"),
    "-": ("minus", "-"),
    "*": ("times", "multiplied by", "x", "*"),
    "/": ("divided by", "/"),
    "%": ("modulo", "%"),
    "**": ("to the power of", "**"),
}


def held_out(n: int) -> bool:
    """Whole numbers that the arithmetic conversations never use: the evaluation's test set."""
    return n > 20 and zlib.crc32(str(n).encode()) % 8 == 0


def _int(rng: random.Random, low: int, high: int) -> int:
    """rng.randint(low, high), never a held-out number."""
    while held_out(n := rng.randint(low, high)):
        pass
    return n


def _multiple(rng: random.Random, factor: int, low: int, high: int) -> int:
    """factor * rng.randint(low, high), never a held-out number."""
    while held_out(n := factor * rng.randint(low, high)):
        pass
    return n


def _number(rng: random.Random) -> str:
    size = rng.random()
    if size < 0.08:
        return f"{rng.randint(0, 99)}.{rng.randint(1, 9)}"  # a decimal
    if size < 0.6:
        return str(rng.randint(0, 20))
    if size < 0.85:
        return str(_int(rng, 21, 100))
    if size < 0.96:
        return str(_int(rng, 101, 999))
    return str(_int(rng, 1000, 9999))


def _binary(rng: random.Random) -> tuple[str, str, str]:
    """(left, operator, right) with operands that make sense for the operator."""
    operator = rng.choices(("+", "-", "*", "/", "%", "**"), (3, 3, 3, 2, 0.5, 0.7))[0]
    if operator == "**":
        return str(rng.randint(0, 12)), operator, str(rng.randint(0, 4))
    if operator == "/":  # mostly divisions that come out even, and never by a long number
        right = rng.randint(1, 12)
        left = _multiple(rng, right, 0, 20) if rng.random() < 0.7 else _int(rng, 1, 100)
        return str(left), operator, str(right)
    if operator == "%":
        return str(_int(rng, 1, 100)), operator, str(rng.randint(2, 12))
    return _number(rng), operator, _number(rng)


def _call(expression: str) -> tuple[dict, dict]:
    """The assistant's tool call and the tool's result turn, computed by the real calculator."""
    call = {"role": "assistant", "content": "", "tool_call": {"name": "calculator", "arguments": expression}}
    return call, {"role": "tool", "content": calculate(expression)}


def _answer(result: str, expression: str, rng: random.Random, spoken: str | None = None) -> str:
    if is_error(result):
        if "division by zero" in result:
            return rng.choice(
                (
                    "You can't divide by zero, so there is no answer.",
                    "That has no answer: dividing by zero is not possible.",
                )
            )
        return f"I could not calculate that: {result.removeprefix('error: ')}."
    choices = [f"{expression} = {result}.", f"The answer is {result}.", f"It is {result}."]
    if spoken:
        choices.append(f"{spoken} is {result}.")
    return rng.choice(choices)


_WORD_PROBLEMS = (
    # (question, expression, answer template with {r}); {a} and {b} are filled with small numbers
    ("I have {a} apples and I buy {b} more. How many apples do I have?", "{a} + {b}", "You have {r} apples."),
    ("There are {a} birds on a tree and {b} fly away. How many birds are left?", "{a} - {b}", "{r} birds are left."),
    ("A box holds {a} crayons. How many crayons are in {b} boxes?", "{a} * {b}", "There are {r} crayons."),
    (
        "{a} cookies are shared equally by {b} children. How many cookies does each child get?",
        "{a} / {b}",
        "Each child gets {r} cookies.",
    ),
)


def arithmetic(rng: random.Random, context: _Context) -> Conversation:
    shape = rng.random()
    spoken = None
    if shape < 0.12:  # a word problem
        question, pattern, template = rng.choice(_WORD_PROBLEMS)
        b = rng.randint(2, 9)
        a = _multiple(rng, b, 1, 9) if "/" in pattern else _int(rng, b, 30)  # even shares, nothing negative
        expression = pattern.format(a=a, b=b)
        call, result = _call(expression)
        answer = template.format(r=result["content"])  # these operands never give an error
        return [_user(question.format(a=a, b=b)), call, result, _assistant(answer)]
    if shape < 0.15:  # division by zero: the tool's error result, explained
        left = _number(rng)
        expression = f"{left} / 0"
        question = rng.choice((f"What is {left} divided by 0?", f"What is {left} / 0?"))
    elif shape < 0.35:  # three numbers, sometimes with parentheses
        x, op1, y = _binary(rng)
        op2, z = rng.choice(("+", "-", "*")), _number(rng)
        expression = f"({x} {op1} {y}) {op2} {z}" if rng.random() < 0.5 else f"{x} {op1} {y} {op2} {z}"
        question = rng.choice(("What is {}?", "Calculate {}.", "What's {}?", "Can you work out {}?")).format(expression)
    elif shape < 0.4:  # squares
        n = _int(rng, 1, 30)
        expression = f"{n} ** 2"
        question, spoken = f"What is {n} squared?", f"{n} squared"
    else:  # two numbers, with the operator as a symbol or a word
        left, operator, right = _binary(rng)
        expression = f"{left} {operator} {right}"
        word = rng.choice(_OPERATOR_WORDS[operator])
        spoken = f"{left} {word} {right}"
        question = rng.choice(
            (
                "What is {}?",
                "What's {}?",
                "Calculate {}.",
                "{} = ?",
                "How much is {}?",
                "Please compute {}.",
                "what is {}",
            )
        ).format(spoken)
    call, result = _call(expression)
    return [_user(question), call, result, _assistant(_answer(result["content"], expression, rng, spoken))]


# stories -------------------------------------------------------------------------------------


def story(rng: random.Random, context: _Context, index: StoryIndex | None = None) -> Conversation:
    index = index or context.stories
    if rng.random() < 0.1:  # no topic at all
        chosen = rng.choice(index.stories)
        return [
            _user(rng.choice(("Tell me a story.", "Can you tell me a story?", "Tell me a bedtime story."))),
            _assistant(chosen),
        ]
    request = story_request(rng, index)
    return [_user(request.request), _assistant(request.story)]


# answering from a passage --------------------------------------------------------------------

DOES_NOT_SAY = "The text does not say."
_NAMED = re.compile(
    r"\b(?:a|an) ((?:(?:little|big|small|young|kind|happy|curious|brave|friendly|shy|old|nice|smart|cute|tiny)"
    r" )?([a-z]+)) named ([A-Z][a-z]+)\b"
)
_GIRLS = ("Mia", "Lily", "Sara", "Anna", "Zoe", "Ella", "Emma", "Lucy")
_BOYS = ("Tom", "Ben", "Max", "Leo", "Sam", "Jack", "Tim", "Noah")
_PLACES = (
    "a small town by the sea",
    "a big city",
    "a farm near the hills",
    "a village in the forest",
    "a blue house on a quiet street",
    "a flat above a bakery",
)
_PETS = ("cat", "dog", "rabbit", "parrot", "goldfish", "hamster", "turtle")
_PET_NAMES = ("Whiskers", "Buddy", "Coco", "Pepper", "Bubbles", "Sunny", "Biscuit", "Shadow")
_COLORS = ("black", "white", "brown", "orange", "grey", "golden", "spotted")
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_OUTINGS = ("park", "library", "swimming pool", "market", "beach", "zoo")
_RELATIVES = ("grandma", "grandpa", "aunt", "uncle", "big sister", "best friend")
_FOODS = ("pancakes", "apples", "pasta", "strawberries", "rice and beans", "carrot soup")


def _facts(rng: random.Random) -> list[tuple[str, str, str, str]]:
    """A made-up person and facts about them: (sentence, question, answer, the answer's key words) for each."""
    girl = rng.random() < 0.5
    name = rng.choice(_GIRLS if girl else _BOYS)
    he, his = ("She", "her") if girl else ("He", "his")
    place, pet, pet_name, color = rng.choice(_PLACES), rng.choice(_PETS), rng.choice(_PET_NAMES), rng.choice(_COLORS)
    day, outing, relative, food, age = (
        rng.choice(_DAYS),
        rng.choice(_OUTINGS),
        rng.choice(_RELATIVES),
        rng.choice(_FOODS),
        rng.randint(5, 12),
    )
    facts = [
        (f"{name} lives in {place}.", f"Where does {name} live?", f"{name} lives in {place}.", place),
        (
            f"{he} has {_a(color)} {color} {pet} called {pet_name}.",
            f"What is the name of {name}'s {pet}?",
            f"{name}'s {pet} is called {pet_name}.",
            pet_name,
        ),
        (
            f"Every {day}, {he.lower()} goes to the {outing} with {his} {relative}.",
            f"When does {name} go to the {outing}?",
            f"{name} goes to the {outing} every {day}.",
            day,
        ),
        (f"{he} likes to eat {food}.", f"What does {name} like to eat?", f"{name} likes to eat {food}.", food),
        (f"{name} is {age} years old.", f"How old is {name}?", f"{name} is {age} years old.", str(age)),
    ]
    return facts


def _a(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def fact_passage(rng: random.Random, unanswerable_rate: float = 0.15) -> tuple[str, str, str, str | None]:
    """(passage, question, reference answer, key words of the answer or None when the text does not say)."""
    facts = _facts(rng)
    chosen = [facts[0], *rng.sample(facts[1:], k=rng.randint(2, 3))]
    passage = " ".join(fact[0] for fact in [chosen[0], *rng.sample(chosen[1:], len(chosen) - 1)])
    missing = [f for f in facts if f not in chosen]
    if rng.random() < unanswerable_rate:  # a question the text does not answer
        return passage, rng.choice(missing)[1], DOES_NOT_SAY, None
    _, question, answer, key = rng.choice(chosen)
    return passage, question, answer, key


def _story_passage(rng: random.Random, context: _Context) -> tuple[str, str, str]:
    text, match = rng.choice(context.named_characters)
    described, noun, name = match.group(1), match.group(2), match.group(3)
    question, answer = rng.choice(
        (
            (f"What is the name of the {noun} in the story?", f"The {noun} is named {name}."),
            ("Who is the story about?", f"The story is about {match.group(0)}."),
            (f"Who is {name}?", f"{name} is {_a(described)} {described}."),
        )
    )
    return text, question, answer


def passage(rng: random.Random, context: _Context) -> Conversation:
    use_story = rng.random() < 0.5 and context.named_characters
    text, question, answer = _story_passage(rng, context) if use_story else fact_passage(rng)[:3]
    form = rng.random()
    if form < 0.25:  # the text first, the question in a second turn
        return [
            _user(rng.choice(("Please read this text:", "Here is a text:", "Read this:")) + f"\n\n{text}"),
            _assistant(rng.choice(("I have read it. What would you like to know?", "Done. What is your question?"))),
            _user(question),
            _assistant(answer),
        ]
    if form < 0.6:
        prompt = f"Read the text and answer the question.\n\n{text}\n\nQuestion: {question}"
    elif form < 0.8:
        prompt = f"{text}\n\n{question}"
    else:
        prompt = f"Here is a short text:\n\n{text}\n\nAnswer this question: {question}"
    return [_user(prompt), _assistant(answer)]


# searching the knowledge base ---------------------------------------------------------------

NOT_FOUND = "I could not find that in the documents."
NO_DOCUMENTS = "I have no documents to search."
_QUESTION_WORDS = "a an the is are was do does did what where when who how which of to"
_QUERY_SKIP = frozenset(_QUESTION_WORDS.split())


def search_query(question: str) -> str:
    """What the assistant searches for: the question's words but the commonest, in order ("old Mia")."""
    words = re.findall(r"[\w']+", question)
    return " ".join([w for w in words if w.lower() not in _QUERY_SKIP] or words)


def _source(rng: random.Random, name: str) -> str:
    """A made-up document name for a text about `name` ("mia.txt", "notes.md", "doc12.txt")."""
    stem = rng.choice(
        (
            name.lower(),
            name.lower(),
            f"about-{name.lower()}",
            f"{name.lower()}_notes",
            "notes",
            "people",
            "family",
            f"doc{rng.randint(1, 99)}",
            f"file{rng.randint(1, 20)}",
        )
    )
    return stem + rng.choice((".txt", ".txt", ".md", ".md", ".pdf"))


def _passage(rng: random.Random, text: str, source: str) -> Passage:
    return Passage(source, 1 if rng.random() < 0.7 else rng.randint(2, 6), text)


def search(rng: random.Random, context: _Context) -> Conversation:
    """A question about a made-up person: the assistant searches, then answers from what it found, citing it."""
    text, question, answer, key = fact_passage(rng)
    name = text.split()[0]
    call = {"role": "assistant", "content": "", "tool_call": {"name": SEARCH, "arguments": search_query(question)}}
    outcome = rng.random()
    if outcome < 0.05:  # a chat without a knowledge base
        result, reply = NO_KNOWLEDGE_BASE, NO_DOCUMENTS
    elif outcome < 0.2:  # nothing in the documents is about it
        result, reply = NO_PASSAGE, NOT_FOUND
    else:
        source = _source(rng, name)
        found = [_passage(rng, text, source)]
        if rng.random() < 0.35:  # a second passage, about someone else: the answer is in the one naming the person
            while (other := fact_passage(rng, unanswerable_rate=0)[0]).split()[0] == name:
                pass
            other_passage = _passage(rng, other, _source(rng, other.split()[0]))
            found = [*found, other_passage] if rng.random() < 0.75 else [other_passage, *found]
        result = format_passages(found)
        reply = DOES_NOT_SAY if key is None else f"{answer.removesuffix('.')} ({source})."
    return [_user(question), call, {"role": "tool", "content": result}, _assistant(reply)]


# several requests in one conversation ------------------------------------------------------


def multi_turn(rng: random.Random, context: _Context) -> Conversation:
    """Two or three requests of different kinds, each answered as its own kind answers it.

    A story comes last more often than not: after other turns is where a small model lost it.
    Identity and small talk keep their first exchange only, so that the turns stay short.
    """
    kinds = rng.sample(("identity", "small_talk", "arithmetic", "story"), k=rng.choice((2, 3, 3)))
    if "story" in kinds and rng.random() < 0.6:
        kinds.remove("story")
        kinds.append("story")
    conversation: Conversation = []
    for kind in kinds:
        if kind == "story":
            conversation += story(rng, context, context.short_stories)
        elif kind == "arithmetic":
            conversation += arithmetic(rng, context)
        else:
            conversation += GENERATORS[kind](rng, context)[:2]
    return conversation


GENERATORS: dict[str, Callable[[random.Random, _Context], Conversation]] = {
    "identity": identity,
    "small_talk": small_talk,
    "arithmetic": arithmetic,
    "story": story,
    "passage": passage,
    "search": search,
    "multi_turn": multi_turn,
}
