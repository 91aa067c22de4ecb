"""The calculator tool: right answers, clean formatting, and hostile input answered quickly with an error."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ownllm.chatformat.calculator import MAX_DEPTH, MAX_INPUT_CHARS, calculate, is_error
from ownllm.chatformat.tools import format_tool_call, parse_tool_call, run_tool


@pytest.mark.parametrize(
    "expression, expected",
    [
        ("12 * 7", "84"),
        ("12*7", "84"),
        ("1 + 2 * 3", "7"),
        ("(1 + 2) * 3", "9"),
        ("10 - 4 - 3", "3"),  # left-associative
        ("100 / 10 / 5", "2"),
        ("6 / 3", "2"),  # exact: not 2.0
        ("7 / 2", "3.5"),
        ("1 / 3", "0.3333333333"),
        ("2 / 3", "0.6666666667"),
        ("0.1 + 0.2", "0.3"),  # exact decimals, no 0.30000000000000004
        ("-2 ** 2", "-4"),  # Python precedence: the power binds tighter than the sign
        ("(-2) ** 2", "4"),
        ("2 ** -1", "0.5"),
        ("2 ** 3 ** 2", "512"),  # right-associative
        ("-7 % 3", "2"),
        ("10 % 3", "1"),
        ("5.5 % 2", "1.5"),
        ("--3", "3"),
        ("+4", "4"),
        (".5 + .5", "1"),
        ("2 ** 0.5", "1.414213562"),
        ("(2 ** 0.5) ** 2", "2"),  # float noise rounded away
        ("0 - 0", "0"),
        ("0 * -1", "0"),  # never "-0"
        ("2 ** 100", "1267650600228229401496703205376"),  # big integers stay exact
        ("10 ** 60", "1e+60"),  # longer ones are shown in scientific notation
        ("0.0000001", "1e-7"),
        ("1000000000000000000 / 3", "3.333333333e+17"),
        ("  3\t+ 4\n", "7"),
        ("(((((1)))))", "1"),
    ],
)
def test_arithmetic_is_right_and_cleanly_formatted(expression, expected):
    assert calculate(expression) == expected


HOSTILE = [
    ("1 / 0", "division by zero"),
    ("5 % 0", "division by zero"),
    ("0 ** -1", "division by zero"),
    ("9 ** 9 ** 9", "too many digits"),
    ("10 ** 10 ** 100", "too many digits"),
    ("2 ** 1000000000", "too many digits"),
    ("(1/3) ** 100000", "too many digits"),
    ("1.00001 ** 10000000000", "too many digits"),  # refused before computing
    ("1.5 ** 2000.5", "too large"),  # a fractional power overflows a float
    ("9" * 199 + " * " + "9" * 1, "too long"),
    ("1" * (MAX_INPUT_CHARS + 1), "too long"),
    ("(" * 60 + "1" + ")" * 60, "nested too deeply"),
    ("-" * 100 + "1", "nested too deeply"),
    ("2**" * 45 + "2", "nested too deeply"),
    ("__import__('os').system('ls')", "unexpected character '_'"),
    ("os.system('ls')", "unexpected character 'o'"),
    ("abs(-1)", "unexpected character 'a'"),
    ("x + 1", "unexpected character 'x'"),
    ("(1).__class__", "unexpected character '.'"),
    ("[1, 2]", "unexpected character '['"),
    ("1; 2", "unexpected character ';'"),
    ("lambda: 1", "unexpected character 'l'"),
    ("1e5", "unexpected character 'e'"),
    ("2 ^ 3", "unexpected character '^'"),
    ("٣ + ١", "unexpected character '٣'"),  # Arabic-Indic digits are not ASCII digits
    ("１２", "unexpected character '１'"),  # fullwidth digits
    ("3²", "unexpected character '²'"),
    ("1\u200b+1", "U+200B"),  # zero-width space
    ("1 + \x00", "U+0000"),
    ("(-8) ** (1/3)", "not a real number"),
    ("", "empty"),
    ("   ", "empty"),
    ("1 +", "ends too early"),
    ("(1 + 2", "never closed"),
    ("1 + 2)", "unexpected ')'"),
    ("()", "unexpected ')'"),
    ("1 2", "unexpected number 2"),
    ("2 ** ** 2", "unexpected '**'"),
    ("1.2.3", "unexpected number 0.3"),
]


@pytest.mark.parametrize("expression, reason", HOSTILE)
def test_hostile_or_malformed_input_is_an_error_result_returned_quickly(expression, reason):
    start = time.perf_counter()
    result = calculate(expression)
    elapsed = time.perf_counter() - start
    assert is_error(result) and reason in result, result
    assert elapsed < 0.05, f"{expression[:30]!r} took {elapsed:.3f} s"


def test_limits_are_exactly_where_documented():
    assert not is_error(calculate("1" * MAX_INPUT_CHARS))
    assert not is_error(calculate("(" * MAX_DEPTH + "1" + ")" * MAX_DEPTH))
    assert "nested too deeply" in calculate("(" * (MAX_DEPTH + 2) + "1" + ")" * (MAX_DEPTH + 2))
    assert calculate("2 ** 999") != calculate("2 ** 1000")
    assert not is_error(calculate("2 ** 999")) and is_error(calculate("2 ** 1000"))


def test_a_non_string_expression_is_an_error_not_an_exception():
    assert is_error(calculate(None))  # type: ignore[arg-type]
    assert is_error(calculate(12))  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789.+-*/%() ", max_size=60))
def test_any_arithmetic_looking_text_gives_a_value_or_an_error_never_an_exception(text):
    result = calculate(text)
    assert isinstance(result, str) and result
    assert "could not evaluate" not in result  # the last-resort guard for bugs never fires


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_arbitrary_unicode_never_raises(text):
    result = calculate(text)
    assert isinstance(result, str) and "could not evaluate" not in result


@settings(max_examples=200, deadline=None)
@given(st.integers(-(10**6), 10**6), st.integers(-(10**6), 10**6), st.sampled_from(["+", "-", "*", "%", "/"]))
def test_integer_results_agree_with_exact_python_arithmetic(a, b, operator):
    result = calculate(f"{a} {operator} ({b})")
    if operator in "/%" and b == 0:
        assert result == "error: division by zero"
    elif operator == "/":
        assert abs(float(result) - a / b) <= 1e-9 * max(1.0, abs(a / b))
    else:
        assert result == str({"+": a + b, "-": a - b, "*": a * b, "%": a % b if b else 0}[operator])


def test_tool_calls_round_trip_and_bad_calls_get_error_results():
    call = parse_tool_call("calculator(12 * (3 + 4))")
    assert call == {"name": "calculator", "arguments": "12 * (3 + 4)"}
    assert format_tool_call(call) == "calculator(12 * (3 + 4))"
    assert run_tool(call) == "84"
    malformed = parse_tool_call("calculate 12 * 7")
    assert malformed == {"name": "", "arguments": "calculate 12 * 7"}
    assert format_tool_call(malformed) == "calculate 12 * 7"  # kept verbatim
    assert run_tool(malformed).startswith("error: a tool call must look like")
    assert run_tool(parse_tool_call("shell(rm -rf /)")) == "error: unknown tool 'shell'; available: calculator, search"
    assert run_tool(parse_tool_call("calculator(__import__('os'))")).startswith("error: unexpected character")
