"""Split patterns: how text is cut into pieces before BPE runs inside each piece.

A merge never crosses a piece boundary, so the pattern decides what a token can be:
with the GPT-4 pattern " the" and " The" are candidates but "e t" never is.

Two regex engines read the pattern: the `regex` module (trainer, reference encoder)
and tiktoken's Rust engine (fast encoder). Their Unicode tables differ: today about
17,000 code points are letters for one and unassigned for the other. So a pattern is
*frozen* before use: every Unicode class (\\p{..}, \\P{..}, \\w, \\d, \\s and their
negations) is replaced by the explicit list of code-point ranges it matches in the
`regex` module at training time. Both engines then read the same literal ranges and
agree on every character, and a saved tokenizer splits text the same way forever,
whatever library versions later load it.
"""

from __future__ import annotations

import functools

import regex

from ownllm.core.errors import UserError

# tiktoken's cl100k_base (GPT-4) and r50k_base (GPT-2) patterns, verbatim.
GPT4_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""

PRESETS: dict[str, str] = {"gpt4": GPT4_PATTERN, "gpt2": GPT2_PATTERN}
DEFAULT_PATTERN = "gpt4"

# A Unicode class escape: \p{Letter}, \pL, \P{N}, \w, \W, \d, \D, \s, \S.
_CLASS_ESCAPE = regex.compile(r"\\[pP](?:\{[^}]*\}|[A-Za-z])|\\[wWdDsS]")
# The start of a character class: "[", "[^", and a "]" right after them, which is a literal.
_CLASS_OPENING = regex.compile(r"\[\^?\]?")


def resolve_pattern(pattern: str) -> tuple[str, str]:
    """Return (name, template) for a preset name or a custom regex; 'custom' names the latter."""
    if pattern in PRESETS:
        return pattern, PRESETS[pattern]
    try:
        compiled = regex.compile(pattern)
    except regex.error as e:
        presets = ", ".join(PRESETS)
        raise UserError(f"--pattern {pattern!r} is neither a preset ({presets}) nor a valid regex: {e}") from None
    if compiled.groups:  # findall would return the groups instead of the pieces
        raise UserError(f"--pattern {pattern!r} has capturing groups; write them as (?:...)")
    return "custom", pattern


def freeze_pattern(template: str) -> str:
    """Replace every Unicode class in `template` by the literal code-point ranges it matches.

    Only the `regex` module's own tables are consulted, so the frozen pattern behaves exactly
    like the template in the `regex` module, and identically in any engine that reads ranges.
    Nested classes ([[:alpha:]], [a[b]]) are left alone; a custom pattern using them is caught
    by the check that runs after training.
    """
    out: list[str] = []
    in_class = False
    i = 0
    while i < len(template):
        char = template[i]
        if char == "\\":
            escape = _CLASS_ESCAPE.match(template, i)
            if escape is None:  # any other escape (\r, \n, \', \\, ...) is copied as it is
                out.append(template[i : i + 2])
                i += 2
                continue
            body = _ranges_to_class_body(_code_point_ranges(escape.group()))
            out.append(body if in_class else f"[{body}]")
            i = escape.end()
            continue
        if char == "[" and not in_class:
            opening = _CLASS_OPENING.match(template, i)
            out.append(opening.group())
            i = opening.end()
            in_class = True
            continue
        if char == "]" and in_class:
            in_class = False
        out.append(char)
        i += 1
    return "".join(out)


@functools.cache
def _all_characters() -> tuple[tuple[int, str], ...]:
    """Every Unicode scalar value as text, in two runs (surrogates cannot occur in UTF-8 text)."""
    return (
        (0, "".join(map(chr, range(0xD800)))),
        (0xE000, "".join(map(chr, range(0xE000, 0x110000)))),
    )


@functools.cache
def _code_point_ranges(class_escape: str) -> tuple[tuple[int, int], ...]:
    """The inclusive (first, last) code-point ranges that `class_escape` matches in the regex module."""
    runs = regex.compile(f"(?:{class_escape})+")
    ranges = []
    for offset, characters in _all_characters():
        ranges += [(offset + m.start(), offset + m.end() - 1) for m in runs.finditer(characters)]
    if not ranges:
        raise UserError(f"the split pattern's class {class_escape} matches no character; remove it")
    return tuple(ranges)


def _ranges_to_class_body(ranges: tuple[tuple[int, int], ...]) -> str:
    def escape(code_point: int) -> str:
        return f"\\u{code_point:04X}" if code_point <= 0xFFFF else f"\\U{code_point:08X}"

    return "".join(escape(a) if a == b else f"{escape(a)}-{escape(b)}" for a, b in ranges)
