"""The calculator tool: a safe arithmetic evaluator for expressions a model writes.

The model's tool calls are untrusted text, so nothing here uses Python's `eval` or even
`ast`: a small recursive-descent parser reads exactly this grammar and nothing else,

    expression := term (("+" | "-") term)*
    term       := unary (("*" | "/" | "%") unary)*
    unary      := ("-" | "+") unary | power
    power      := atom ("**" unary)?          # right-associative: 2 ** 3 ** 2 = 2 ** 9
    atom       := NUMBER | "(" expression ")"
    NUMBER     := ASCII digits with an optional decimal point: 12, 3.5, .5

with Python's precedence (-2 ** 2 = -4, 2 ** -1 = 0.5). Arithmetic is exact: numbers are
fractions, so 0.1 + 0.2 = 0.3 and 6 / 3 = 2; only a fractional power (2 ** 0.5) falls back
to floating point. Every way to make the work large is bounded: the input length, the
nesting depth, and the size of every intermediate number (a power is refused *before* it
is computed if its result would be too big). So any input, however hostile, is answered in
microseconds, and `calculate` never raises: a problem comes back as a result string that
starts with "error:", which is what the model sees as the tool's answer.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import cast

MAX_INPUT_CHARS = 200  # a tool call is one short expression; anything longer is refused unread
MAX_DEPTH = 40  # nested parentheses / unary signs (the parser recurses once per level)
MAX_BITS = 1000  # numerator and denominator of every intermediate value (~301 digits; still converts to float)
MAX_EXACT_DIGITS = 40  # integers longer than this are shown in scientific notation
SIGNIFICANT_DIGITS = 10  # non-integers are rounded to this many significant digits

ERROR_PREFIX = "error: "
TOO_MANY_DIGITS = "the result has too many digits"
Number = Fraction | float


class CalculatorError(Exception):
    """A problem with the expression; its message becomes the tool's error result."""


def calculate(expression: str) -> str:
    """The value of `expression` formatted for a person ("84", "3.5"), or "error: ..." — never an exception."""
    try:
        return format_number(evaluate(expression))
    except CalculatorError as e:
        return ERROR_PREFIX + str(e)
    except Exception as e:  # pragma: no cover - a bug must not crash a chat; the fuzz test checks this never fires
        return ERROR_PREFIX + f"could not evaluate ({type(e).__name__})"


def is_error(result: str) -> bool:
    return result.startswith(ERROR_PREFIX)


def evaluate(expression: str) -> Number:
    """The exact value of `expression`; raises CalculatorError for anything it refuses."""
    if not isinstance(expression, str):
        raise CalculatorError("the expression must be text")
    if len(expression) > MAX_INPUT_CHARS:
        raise CalculatorError(f"expression is too long ({len(expression)} characters, at most {MAX_INPUT_CHARS})")
    parser = _Parser(_tokenize(expression))
    value = parser.expression(depth=0)
    if parser.peek() is not None:
        raise CalculatorError(f"unexpected {_describe(parser.peek())}")
    return value


def format_number(value: Number) -> str:
    """84 (not 84.0), 3.5, 0.3333333333, 1.2345e+45; never "-0"."""
    if isinstance(value, Fraction) and value.denominator == 1:
        digits = str(abs(value.numerator))
        if len(digits) <= MAX_EXACT_DIGITS:
            return str(value.numerator)
    as_float = float(value)
    if as_float == 0:
        return "0"
    if 1e-6 <= abs(as_float) < 1e15:
        text = f"{as_float:.{SIGNIFICANT_DIGITS}g}"
        if "e" not in text:
            return text
    mantissa, exponent = f"{as_float:.{SIGNIFICANT_DIGITS - 1}e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent):+d}"


# Tokens: a Fraction for a number, or one of these operator strings.
_OPERATORS = ("**", "+", "-", "*", "/", "%", "(", ")")
_DIGITS = "0123456789"  # ASCII only: str.isdigit() would accept "٣" and "²"
_SPACE = " \t\n\r"


def _tokenize(text: str) -> list[Fraction | str]:
    tokens: list[Fraction | str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char in _SPACE:
            i += 1
        elif char in _DIGITS or (char == "." and i + 1 < len(text) and text[i + 1] in _DIGITS):
            start = i
            while i < len(text) and text[i] in _DIGITS:
                i += 1
            if i < len(text) and text[i] == ".":
                i += 1
                while i < len(text) and text[i] in _DIGITS:
                    i += 1
            literal = text[start:i]
            number = Fraction(literal.rstrip(".") or "0")
            _checked(number)  # refuses a literal too big to work with
            tokens.append(number)
        elif text.startswith("**", i):
            tokens.append("**")
            i += 2
        elif char in _OPERATORS:
            tokens.append(char)
            i += 1
        else:
            shown = char if char.isprintable() and not char.isspace() else f"U+{ord(char):04X}"
            raise CalculatorError(f"unexpected character {shown!r} at position {i}; use numbers, + - * / ** % and ( )")
    if not tokens:
        raise CalculatorError("the expression is empty")
    return tokens


class _Parser:
    """One method per grammar rule; `depth` counts nesting so hostile input cannot exhaust the stack."""

    def __init__(self, tokens: list[Fraction | str]):
        self.tokens = tokens
        self.position = 0

    def peek(self) -> Fraction | str | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def take(self) -> Fraction | str:
        token = self.peek()
        if token is None:
            raise CalculatorError("the expression ends too early")
        self.position += 1
        return token

    def expression(self, depth: int) -> Number:
        value = self.term(depth)
        while self.peek() in ("+", "-"):
            value = _apply(cast(str, self.take()), value, self.term(depth))
        return value

    def term(self, depth: int) -> Number:
        value = self.unary(depth)
        while self.peek() in ("*", "/", "%"):
            value = _apply(cast(str, self.take()), value, self.unary(depth))
        return value

    def unary(self, depth: int) -> Number:
        if depth > MAX_DEPTH:
            raise CalculatorError(f"the expression is nested too deeply (at most {MAX_DEPTH} levels)")
        if self.peek() in ("-", "+"):
            sign = self.take()
            value = self.unary(depth + 1)
            return -value if sign == "-" else value
        return self.power(depth)

    def power(self, depth: int) -> Number:
        base = self.atom(depth)
        if self.peek() == "**":
            self.take()
            return _power(base, self.unary(depth + 1))
        return base

    def atom(self, depth: int) -> Number:
        token = self.take()
        if isinstance(token, Fraction):
            return token
        if token == "(":
            value = self.expression(depth + 1)
            if self.peek() != ")":
                raise CalculatorError("a '(' is never closed")
            self.take()
            return value
        raise CalculatorError(f"unexpected {_describe(token)}")


def _apply(operator: str, left: Number, right: Number) -> Number:
    if operator in ("/", "%") and right == 0:
        raise CalculatorError("division by zero")
    try:
        if operator == "+":
            result = left + right
        elif operator == "-":
            result = left - right
        elif operator == "*":
            result = left * right
        elif operator == "/":
            result = left / right
        else:
            result = left % right
    except OverflowError:  # a float operand can overflow where an exact one would not
        raise CalculatorError("the result is too large") from None
    return _checked(result)


def _power(base: Number, exponent: Number) -> Number:
    if base == 0 and exponent < 0:
        raise CalculatorError("division by zero (0 to a negative power)")
    if isinstance(base, Fraction) and isinstance(exponent, Fraction) and exponent.denominator == 1:
        n = abs(exponent.numerator)
        if abs(base) != 1 and base != 0:  # 0, 1 and -1 stay small whatever the exponent
            bits = max(base.numerator.bit_length(), base.denominator.bit_length())
            if n * max(bits - 1, 1) > MAX_BITS:  # x**n needs at least n*(bits-1) bits: refuse before computing
                raise CalculatorError(TOO_MANY_DIGITS)
        return _checked(base**exponent.numerator)
    if base < 0 and float(exponent) != int(float(exponent)):
        raise CalculatorError("a negative number to a fractional power is not a real number")
    try:
        return _checked(float(base) ** float(exponent))
    except OverflowError:
        raise CalculatorError("the result is too large") from None


def _checked(value: Number) -> Number:
    """Refuse any intermediate value too big to keep working with cheaply."""
    if isinstance(value, Fraction):
        if value.numerator.bit_length() > MAX_BITS or value.denominator.bit_length() > MAX_BITS:
            raise CalculatorError(TOO_MANY_DIGITS)
        return value
    if not math.isfinite(value):
        raise CalculatorError("the result is too large")
    return value


def _describe(token: Fraction | str | None) -> str:
    if token is None:
        return "end of the expression"
    if isinstance(token, Fraction):
        return f"number {format_number(token)}"
    return f"{token!r}"
