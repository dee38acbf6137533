"""The TICKscript lexer follows Kapacitor's `lex.go`, traps included."""

from __future__ import annotations

import pytest

from federation.errors import TickScriptError
from federation.tickscript.lexer import Token, TokenType, tokenize

T = TokenType


def kinds(source: str) -> list[TokenType]:
    return [token.type for token in tokenize(source)][:-1]


def texts(source: str) -> list[str]:
    return [token.text for token in tokenize(source)][:-1]


def lex_error(source: str) -> TickScriptError:
    with pytest.raises(TickScriptError) as info:
        tokenize(source, file="x.tick")
    return info.value


def test_every_token_ends_with_eof() -> None:
    tokens = tokenize("")
    assert tokens == [Token(T.EOF, "", 0, 1, 1)]


def test_keywords_are_case_sensitive() -> None:
    assert kinds("var dbrp TRUE FALSE AND OR") == [T.VAR, T.DBRP, T.TRUE, T.FALSE, T.AND, T.OR]
    assert kinds("true false and or Var") == [T.IDENT] * 5


def test_lambda_is_a_keyword_only_directly_before_a_colon() -> None:
    assert kinds("lambda: x") == [T.LAMBDA, T.IDENT]
    assert kinds("lambda") == [T.IDENT]
    error = lex_error("lambda : x")
    assert (error.line, error.column) == (1, 8)


def test_identifier_must_start_with_a_letter() -> None:
    assert texts("a_1 é9") == ["a_1", "é9"]
    error = lex_error("var x = _private")
    assert (error.line, error.column) == (1, 9)
    assert "letter" in error.message
    assert error.file == "x.tick"


def test_integers_floats_and_leading_dot() -> None:
    assert kinds("10 1.5 .5 0.25") == [T.NUMBER] * 4
    assert texts(".5") == [".5"]


def test_dot_not_followed_by_a_digit_is_the_property_operator() -> None:
    assert kinds("x.align()") == [T.IDENT, T.DOT, T.IDENT, T.LPAREN, T.RPAREN]


def test_multiple_decimals_is_an_error_at_the_number() -> None:
    error = lex_error("x = 1.2.3")
    assert (error.line, error.column) == (1, 5)


def test_exponent_notation_lexes_as_number_then_identifier() -> None:
    assert [(t.type, t.text) for t in tokenize("1e3")][:-1] == [(T.NUMBER, "1"), (T.IDENT, "e3")]


def test_durations_take_one_unit() -> None:
    assert texts("10u 5µ 3ms 10s 5m 1h 7d 1w") == [
        "10u",
        "5µ",
        "3ms",
        "10s",
        "5m",
        "1h",
        "7d",
        "1w",
    ]
    assert kinds("1h") == [T.DURATION]


def test_fractional_duration_is_a_float_then_an_identifier() -> None:
    assert [(t.type, t.text) for t in tokenize("1.5h")][:-1] == [(T.NUMBER, "1.5"), (T.IDENT, "h")]


def test_compound_duration_is_two_durations() -> None:
    assert [(t.type, t.text) for t in tokenize("1h30m")][:-1] == [
        (T.DURATION, "1h"),
        (T.DURATION, "30m"),
    ]


def test_there_is_no_ns_unit() -> None:
    assert [(t.type, t.text) for t in tokenize("5ns")][:-1] == [(T.NUMBER, "5"), (T.IDENT, "ns")]


def test_single_quoted_strings_escape_only_quotes() -> None:
    assert texts(r"'it\'s' 'a\nb'") == [r"'it\'s'", r"'a\nb'"]
    assert texts("''") == ["''"]
    assert texts("'two\nlines'") == ["'two\nlines'"]


def test_triple_quoted_strings_are_literal() -> None:
    source = "'''SELECT 'a' \\ \"b\"\n'''"
    assert texts(source) == [source]
    assert texts("'''a''b'''") == ["'''a''b'''"]


def test_unterminated_string_points_at_its_start() -> None:
    error = lex_error("x\n  |query('abc")
    assert (error.line, error.column) == (2, 10)
    assert "unterminated string" in error.message
    error = lex_error("'''abc''")
    assert (error.line, error.column) == (1, 1)


def test_double_quotes_are_references_with_escaped_quotes() -> None:
    assert [(t.type, t.text) for t in tokenize(r'"a\"b"')][:-1] == [(T.REFERENCE, r'"a\"b"')]
    error = lex_error('"abc')
    assert "unterminated field reference" in error.message


def test_regex_after_regex_operators_and_assignment() -> None:
    assert kinds('"host" =~ /^a\\/b$/') == [T.REFERENCE, T.REGEX_EQUAL, T.REGEX]
    assert kinds('"host" !~ /x/') == [T.REFERENCE, T.REGEX_NOT_EQUAL, T.REGEX]
    assert kinds("var r = /x/") == [T.VAR, T.IDENT, T.ASSIGN, T.REGEX]


def test_slash_after_an_operand_divides() -> None:
    assert kinds("a / 2") == [T.IDENT, T.DIV, T.NUMBER]
    assert kinds("(/x/)") == [T.LPAREN, T.REGEX, T.RPAREN]


def test_star_or_multiply_depends_on_what_precedes() -> None:
    assert kinds("groupBy(*)") == [T.IDENT, T.LPAREN, T.STAR, T.RPAREN]
    assert kinds("a * 2") == [T.IDENT, T.MULT, T.NUMBER]


def test_minus_is_unary_at_a_token_start() -> None:
    assert kinds("-1") == [T.MINUS, T.NUMBER]
    assert kinds("a -1") == [T.IDENT, T.MINUS, T.NUMBER]


def test_binary_operator_after_a_regex_is_an_error() -> None:
    error = lex_error("x =~ /a/ == TRUE")
    assert (error.line, error.column) == (1, 10)


def test_comparison_operators() -> None:
    assert kinds("a < b <= c > d >= e == f != g") == [
        T.IDENT,
        T.LESS,
        T.IDENT,
        T.LESS_EQUAL,
        T.IDENT,
        T.GREATER,
        T.IDENT,
        T.GREATER_EQUAL,
        T.IDENT,
        T.EQUAL,
        T.IDENT,
        T.NOT_EQUAL,
        T.IDENT,
    ]


def test_consecutive_comment_lines_merge_into_one_token() -> None:
    tokens = tokenize("// one\n   // two\n\n// three\nbatch")
    comments = [t for t in tokens if t.type is T.COMMENT]
    assert [c.text for c in comments] == ["// one\n   // two", "// three"]
    assert (comments[1].line, comments[1].column) == (4, 1)


def test_comment_after_an_operand() -> None:
    assert kinds("batch // source\n|query('x')")[:2] == [T.IDENT, T.COMMENT]


def test_unknown_character_reports_line_and_column() -> None:
    error = lex_error("batch\n    |query('x')\n    .period(1h) #")
    assert (error.line, error.column) == (3, 17)
