"""Special tokens: control symbols that text can never produce by accident.

They occupy a fixed block of 16 ids at the *end* of the vocabulary (counted inside
`--vocab-size`), so the ids of learned tokens do not depend on how many specials exist,
and `<|endoftext|>` is always `vocab_size - 16`. The chat tokens are reserved now so that
a pretrained model's vocabulary already has room for them when chat fine-tuning starts;
`<|reserved_N|>` slots can be given a meaning later without changing any id.

Special tokens are never split or merged: training text is cut at them, and `encode`
emits one id for each only when the caller explicitly allows it. By default a document
that contains the string "<|endoftext|>" is encoded as ordinary text, so user data
cannot inject control tokens.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet

ENDOFTEXT = "<|endoftext|>"  # separates documents in token shards
SYSTEM = "<|system|>"  # starts the system message of a conversation
USER = "<|user|>"  # starts a user turn
ASSISTANT = "<|assistant|>"  # starts an assistant turn
END_OF_TURN = "<|end_of_turn|>"  # ends any turn
TOOL_CALL = "<|tool_call|>"  # starts a tool call written by the assistant
TOOL_RESULT = "<|tool_result|>"  # starts the result of a tool call

BLOCK_SIZE = 16
NAMED = (ENDOFTEXT, SYSTEM, USER, ASSISTANT, END_OF_TURN, TOOL_CALL, TOOL_RESULT)
SPECIAL_TOKENS: tuple[str, ...] = NAMED + tuple(f"<|reserved_{i}|>" for i in range(BLOCK_SIZE - len(NAMED)))


def special_token_ids(names: Sequence[str], vocab_size: int) -> dict[str, int]:
    """name -> id for a block of specials placed at the end of a vocabulary of `vocab_size`."""
    first = vocab_size - len(names)
    return {name: first + i for i, name in enumerate(names)}


def check_special_tokens(names: Sequence[str]) -> None:
    """Refuse names that would make special-token matching ambiguous."""
    if any(not isinstance(n, str) or not n for n in names):
        raise ValueError("special tokens must be non-empty strings")
    if len(set(names)) != len(names):
        raise ValueError(f"special tokens must be unique: {list(names)}")
    for a in names:
        for b in names:
            if a != b and a in b:
                raise ValueError(f"special token {a!r} is part of {b!r}; which one a text means would be ambiguous")


def resolve_allowed(allowed_special: str | AbstractSet[str], special_tokens: Mapping[str, int]) -> frozenset[str]:
    """The set of special-token names that `encode` may emit: "all", or names the caller lists."""
    if allowed_special == "all":
        return frozenset(special_tokens)
    if isinstance(allowed_special, str):  # a single name is an easy mistake: {"<|endoftext|>"} was meant
        allowed_special = {allowed_special}
    allowed = frozenset(allowed_special)
    unknown = allowed - special_tokens.keys()
    if unknown:
        raise ValueError(f"not special tokens of this tokenizer: {sorted(unknown)}")
    return allowed
