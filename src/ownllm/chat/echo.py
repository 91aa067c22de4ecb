"""Repeat-after-me conversations: they teach a small model to copy from its context.

Two of the assistant's skills are copying: a calculator call repeats the numbers of the
question (`What is 12 * 7?` -> `calculator(12 * 7)`) and the answer repeats the tool's
result (`84`); a story about a cat must say "cat". The demo's base model, pretrained for
minutes, cannot copy at all (greedy `The number was 8361. Again, the number was 83` goes on
` year old, and the little`), and the arithmetic conversations alone teach it slowly: only a
few of their tokens are copies. In these conversations every trained token but the last is
one, so a few hundred of them make fine-tuning learn to copy much sooner (docs/chat.md,
"Fine-tuning", has the measurements).

    user:      Repeat after me: 4821, 73 and 9
    assistant: 4821, 73 and 9

Conversation `i` of seed `s` depends on `(s, i)` only, like the generated skills.
"""

from __future__ import annotations

import random

from ownllm.chat.conversation import Conversation
from ownllm.chat.stories import TEMPLATE_ONLY, TOPICS

_WORDS = tuple(TOPICS) + tuple(TEMPLATE_ONLY)
_ASK = (
    "Repeat after me: {}",
    "Say this back to me: {}",
    "Please repeat: {}",
    "Copy this exactly: {}",
    'Say "{}"',
    "Can you say {}?",
)


def echo_conversations(count: int, seed: int = 0) -> list[Conversation]:
    """`count` conversations in which the assistant repeats what the user asked it to say."""
    conversations = []
    for i in range(count):
        rng = random.Random(f"ownllm.chat.echo:{seed}:{i}")
        text = rng.choice((_numbers, _expression, _words))(rng)
        conversations.append([{"role": "user", "content": rng.choice(_ASK).format(text)},
                              {"role": "assistant", "content": text}])
    return conversations


def _number(rng: random.Random) -> str:
    return str(rng.randint(0, 10 ** rng.randint(1, 5) - 1))


def _numbers(rng: random.Random) -> str:
    numbers = [_number(rng) for _ in range(rng.randint(1, 4))]
    return numbers[0] if len(numbers) == 1 else ", ".join(numbers[:-1]) + " and " + numbers[-1]


def _expression(rng: random.Random) -> str:
    terms = [_number(rng) for _ in range(rng.randint(2, 3))]
    text = terms[0]
    for term in terms[1:]:
        text += f" {rng.choice('+-*/')} {term}"
    return text


def _words(rng: random.Random) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 5)))
