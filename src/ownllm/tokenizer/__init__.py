"""Our own byte-level BPE tokenizer: trained by `train_bpe`, encoded through tiktoken.

    from ownllm.tokenizer import train_bpe, Tokenizer, ENDOFTEXT
    tok = train_bpe(["some text", Path("book.txt")], vocab_size=1024)
    ids = tok.encode("Once upon a time")            # "<|endoftext|>" in text stays plain text
    ids = tok.encode(doc + ENDOFTEXT, allowed_special={ENDOFTEXT})
    tok.save("runs/demo/tokenizer"); tok = Tokenizer.load("runs/demo/tokenizer")

docs/tokenizer.md describes the algorithm, the special tokens and the saved format.
"""

from ownllm.tokenizer.patterns import DEFAULT_PATTERN, PRESETS
from ownllm.tokenizer.reference import ReferenceEncoder
from ownllm.tokenizer.special_tokens import (
    ASSISTANT,
    END_OF_TURN,
    ENDOFTEXT,
    SPECIAL_TOKENS,
    SYSTEM,
    TOOL_CALL,
    TOOL_RESULT,
    USER,
)
from ownllm.tokenizer.tokenizer import Tokenizer
from ownllm.tokenizer.train import train_bpe

__all__ = [
    "train_bpe",
    "Tokenizer",
    "ReferenceEncoder",
    "SPECIAL_TOKENS",
    "ENDOFTEXT",
    "SYSTEM",
    "USER",
    "ASSISTANT",
    "END_OF_TURN",
    "TOOL_CALL",
    "TOOL_RESULT",
    "PRESETS",
    "DEFAULT_PATTERN",
]
