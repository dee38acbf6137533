"""The TICKscript parser and canonical printer: grammar, literal traps, error positions."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.core.durations import NS_PER_UNIT
from federation.errors import TickScriptError
from federation.tickscript import format, parse
from federation.tickscript.ast import (
    Binary,
    BoolLiteral,
    Chain,
    ChainLink,
    Comment,
    Dbrp,
    Declaration,
    DurationLiteral,
    Expression,
    ExpressionStatement,
    FunctionCall,
    Identifier,
    Lambda,
    ListLiteral,
    NumberLiteral,
    Program,
    Reference,
    RegexLiteral,
    Star,
    Statement,
    StringLiteral,
    TypeDeclaration,
    Unary,
)
from federation.tickscript.lexer import PRECEDENCE, TokenType

T = TokenType
HOUR = NS_PER_UNIT["h"]

SCRIPT = """\
// federation plan delivery_latency dc=dub1 version=3f2a9c0d1e7b
// Rendered by federation; changes made here are overwritten.
dbrp "mail"."raw_30d"

var window = 1h

batch
    |query('''SELECT "latency_ms", "direction"::tag FROM "mail"."raw_30d"."delivery"''')
        .period(window)
        .every(1h)
        .offset(0s)
        .align()
    // one summary per group
    @fedagg()
        .percentiles(50.0, 99.9)
        .minGroupEvents(5)
    |influxDBOut()
        .database('federation')
"""


def value_of(source: str) -> Expression:
    """The value of `var x = <source>`."""
    statement = parse(f"var x = {source}").statements[0]
    assert isinstance(statement, Declaration)
    return statement.value


def parse_error(source: str) -> TickScriptError:
    with pytest.raises(TickScriptError) as info:
        parse(source, file="plan.tick")
    assert info.value.file == "plan.tick"
    return info.value


# -- statements and chains -----------------------------------------------------------------


def test_rendered_script_structure() -> None:
    program = parse(SCRIPT)
    dbrp, window, pipeline = program.statements
    assert dbrp == Dbrp("mail", "raw_30d", parse(SCRIPT).leading_comment)
    assert (dbrp.line, dbrp.column) == (3, 1)
    assert window == Declaration("window", DurationLiteral(HOUR))
    assert isinstance(pipeline, ExpressionStatement)
    chain = pipeline.expression
    assert isinstance(chain, Chain)
    assert chain.head == Identifier("batch")
    assert [(link.operator, link.name) for link in chain.links] == [
        ("|", "query"),
        (".", "period"),
        (".", "every"),
        (".", "offset"),
        (".", "align"),
        ("@", "fedagg"),
        (".", "percentiles"),
        (".", "minGroupEvents"),
        ("|", "influxDBOut"),
        (".", "database"),
    ]
    query = chain.links[0]
    assert (query.line, query.column) == (8, 5)
    assert query.args is not None
    literal = query.args[0]
    assert isinstance(literal, StringLiteral) and literal.triple
    assert literal.value.startswith('SELECT "latency_ms"')
    assert chain.links[1].args == (Identifier("window"),)
    assert chain.links[6].args == (NumberLiteral(50.0, True), NumberLiteral(99.9, True))
    assert chain.links[5].comment == Comment(("// one summary per group",))


def test_leading_comment_carries_the_version_line() -> None:
    comment = parse(SCRIPT).leading_comment
    assert comment is not None
    assert (
        comment.text.splitlines()[0]
        == "federation plan delivery_latency dc=dub1 version=3f2a9c0d1e7b"
    )
    assert (comment.line, comment.column) == (1, 1)
    assert parse("batch|query('x')").leading_comment is None
    only = parse("// just a comment\n")
    assert only.leading_comment == Comment(("// just a comment",))


def test_property_without_parentheses_and_udf_without_parentheses() -> None:
    chain = value_of("batch|query('q').align @fedagg")
    assert isinstance(chain, Chain)
    assert chain.links[1] == ChainLink(".", "align", None)
    assert chain.links[2] == ChainLink("@", "fedagg", None)


def test_chaining_method_needs_parentheses() -> None:
    error = parse_error("batch\n    |query\n")
    assert (error.line, error.column) == (3, 1)
    assert "'('" in error.message


def test_typed_declaration_and_vars_used_later() -> None:
    program = parse("var period duration\nvar data = batch|query('q')\ndata|httpOut('x')")
    assert program.statements[0] == TypeDeclaration("period", "duration")
    second, third = program.statements[1], program.statements[2]
    assert isinstance(second, Declaration) and isinstance(second.value, Chain)
    assert isinstance(third, ExpressionStatement)
    assert third.expression == Chain(
        Identifier("data"), (ChainLink("|", "httpOut", (StringLiteral("x"),)),)
    )


def test_statements_need_no_separator() -> None:
    program = parse("var a = 1 var b = a batch|query('q') batch|query('r')")
    assert len(program.statements) == 4
    assert program.statements[1] == Declaration("b", Identifier("a"))


def test_dbrp_takes_two_references() -> None:
    assert parse('dbrp "a\\"b"."rp"').statements[0] == Dbrp('a"b', "rp")
    error = parse_error("dbrp 'mail'.'raw'")
    assert (error.line, error.column) == (1, 6)
    assert "double-quoted" in error.message
    error = parse_error('dbrp "mail" "raw"')
    assert (error.line, error.column) == (1, 13)


def test_lists_hold_strings_identifiers_and_stars() -> None:
    assert value_of("['a', b, *]") == ListLiteral((StringLiteral("a"), Identifier("b"), Star()))
    assert value_of("[]") == ListLiteral(())
    error = parse_error("var x = ['a', 1]")
    assert (error.line, error.column) == (1, 15)


def test_lambda_arguments_and_global_functions() -> None:
    chain = value_of("batch|query('q')|eval(lambda: floor(\"v\" / 10.0)).as('b')")
    assert isinstance(chain, Chain)
    assert chain.links[1].args == (
        Lambda(FunctionCall("floor", (Binary(T.DIV, Reference("v"), NumberLiteral(10.0, True)),))),
    )
    assert value_of("time(1h)") == FunctionCall("time", (DurationLiteral(HOUR),))


def test_lambda_is_an_identifier_without_colon() -> None:
    assert value_of("lambda") == Identifier("lambda")


# -- literals and their traps --------------------------------------------------------------


def test_leading_zero_integer_is_octal() -> None:
    assert value_of("010") == NumberLiteral(8, False)
    assert value_of("0") == NumberLiteral(0, False)
    assert value_of("00") == NumberLiteral(0, False)
    assert value_of("0.5") == NumberLiteral(0.5, True)
    error = parse_error("var x = 08")
    assert (error.line, error.column) == (1, 9)
    assert "octal" in error.message


def test_leading_dot_float() -> None:
    assert value_of(".5") == NumberLiteral(0.5, True)
    assert value_of("5.") == NumberLiteral(5.0, True)


def test_integers_fit_in_64_bits() -> None:
    assert value_of(str(2**63 - 1)) == NumberLiteral(2**63 - 1, False)
    error = parse_error(f"var x = {2**63}")
    assert "out of range" in error.message


def test_exponent_notation_is_a_parse_error() -> None:
    error = parse_error("batch|query('q')|percentile('v', 1e3)")
    assert (error.line, error.column) == (1, 35)
    assert "exponent" in error.message


def test_fractional_duration_is_a_parse_error() -> None:
    error = parse_error("batch\n    |query('q')\n        .period(1.5h)")
    assert (error.line, error.column) == (3, 20)
    assert "90m" in error.message


def test_compound_duration_is_a_parse_error() -> None:
    error = parse_error("batch\n    |query('q')\n        .period(1h30m)")
    assert (error.line, error.column) == (3, 19)
    assert "1h + 30m" in error.message


def test_duration_arithmetic_is_an_expression() -> None:
    assert value_of("1h + 30m") == Binary(
        T.PLUS, DurationLiteral(HOUR), DurationLiteral(30 * NS_PER_UNIT["m"])
    )


@pytest.mark.parametrize(
    ("literal", "ns"),
    [("10u", 10_000), ("10µ", 10_000), ("3ms", 3_000_000), ("7d", 7 * 86400 * 10**9)],
)
def test_duration_units(literal: str, ns: int) -> None:
    assert value_of(literal) == DurationLiteral(ns)


def test_identifier_cannot_start_with_underscore() -> None:
    error = parse_error("var x = 1\nvar _y = 2")
    assert (error.line, error.column) == (2, 5)


def test_single_quoted_string_escapes_only_quotes() -> None:
    assert value_of(r"'it\'s'") == StringLiteral("it's")
    assert value_of(r"'a\nb\\c'") == StringLiteral(r"a\nb\\c")
    assert value_of("''") == StringLiteral("")


def test_triple_quoted_string_is_literal() -> None:
    literal = value_of("'''SELECT 'a', \\' \"b\"\n FROM x'''")
    assert isinstance(literal, StringLiteral) and literal.triple
    assert literal.value == "SELECT 'a', \\' \"b\"\n FROM x"


def test_double_quotes_make_a_reference_not_a_string() -> None:
    # The parser accepts it; passing a reference where a string belongs is the linter's
    # `argument` rule (Kapacitor reports it when it evaluates the script).
    chain = value_of('batch|query("SELECT 1")')
    assert isinstance(chain, Chain)
    assert chain.links[0].args == (Reference("SELECT 1"),)


def test_regex_after_match_operator() -> None:
    assert value_of('lambda: "host" =~ /^web\\/[0-9]+$/') == Lambda(
        Binary(T.REGEX_EQUAL, Reference("host"), RegexLiteral("^web/[0-9]+$"))
    )
    assert value_of("/x/") == RegexLiteral("x")


def test_invalid_regex_is_an_error_at_the_regex() -> None:
    error = parse_error('var x = lambda: "a" !~ /(unclosed/')
    assert (error.line, error.column) == (1, 24)


def test_booleans_are_uppercase_keywords() -> None:
    assert value_of("TRUE") == BoolLiteral(True)
    assert value_of("true") == Identifier("true")


# -- operators -----------------------------------------------------------------------------


def test_precedence_and_left_associativity() -> None:
    one, two, three = (NumberLiteral(n, False) for n in (1, 2, 3))
    assert value_of("1 + 2 * 3") == Binary(T.PLUS, one, Binary(T.MULT, two, three))
    assert value_of("1 - 2 - 3") == Binary(T.MINUS, Binary(T.MINUS, one, two), three)
    assert value_of("(1 + 2) * 3") == Binary(T.MULT, Binary(T.PLUS, one, two), three)
    a, b, c = Identifier("a"), Identifier("b"), Identifier("c")
    assert value_of("a OR b AND c") == Binary(T.OR, a, Binary(T.AND, b, c))
    assert value_of("a < b == c") == Binary(T.EQUAL, Binary(T.LESS, a, b), c)
    assert value_of("a == b < c + 1 * 2 AND c") == Binary(
        T.AND,
        Binary(
            T.EQUAL,
            a,
            Binary(
                T.LESS,
                b,
                Binary(
                    T.PLUS,
                    c,
                    Binary(T.MULT, NumberLiteral(1, False), NumberLiteral(2, False)),
                ),
            ),
        ),
        c,
    )


def test_unary_operators() -> None:
    assert value_of("-1h") == Unary(T.MINUS, DurationLiteral(HOUR))
    assert value_of("!TRUE") == Unary(T.NOT, BoolLiteral(True))
    assert value_of("-a * b") == Binary(T.MULT, Unary(T.MINUS, Identifier("a")), Identifier("b"))
    assert value_of("a - -1") == Binary(
        T.MINUS, Identifier("a"), Unary(T.MINUS, NumberLiteral(1, False))
    )


def test_missing_operand_reports_the_token() -> None:
    error = parse_error("var x = 1 +\n")
    assert (error.line, error.column) == (2, 1)
    error = parse_error("var x = (1 + 2")
    assert (error.line, error.column) == (1, 15)


def test_error_in_the_middle_of_a_script() -> None:
    error = parse_error(SCRIPT.replace(".minGroupEvents(5)", ".minGroupEvents(5,)"))
    assert (error.line, error.column) == (16, 27)


# -- printer -------------------------------------------------------------------------------


def test_format_round_trips_the_rendered_script() -> None:
    program = parse(SCRIPT)
    text = format(program)
    assert parse(text) == program
    assert format(parse(text)) == text
    assert text.startswith("// federation plan delivery_latency dc=dub1 version=3f2a9c0d1e7b\n")
    assert "    |query('''SELECT" in text
    assert "\n        .period(window)\n" in text


def test_format_keeps_octal_meaning_and_float_form() -> None:
    text = format(parse("var x = 010\nvar y = 1.0\nvar z = .000001"))
    assert text == "var x = 8\n\nvar y = 1.0\n\nvar z = 0.000001\n"


def test_format_parenthesises_by_precedence() -> None:
    for source in ("(1 + 2) * 3", "1 - (2 - 3)", "-(a + b)", "(a OR b) AND c", "a - -1"):
        program = parse(f"var x = {source}")
        assert parse(format(program)) == program


def test_format_wraps_a_regex_before_an_operator_symbol() -> None:
    program = Program(
        (
            Declaration(
                "x",
                Binary(
                    T.EQUAL,
                    Binary(T.REGEX_EQUAL, Reference("a"), RegexLiteral("b")),
                    Identifier("c"),
                ),
            ),
        )
    )
    assert parse(format(program)) == program


def test_format_string_chooses_a_form_that_reads_back() -> None:
    for value in ("it's", "back\\slash\\", "a'''b", "\\'", "", "x\ny"):
        program = Program((Declaration("s", StringLiteral(value)),))
        assert parse(format(program)) == program


# -- property: generated scripts round trip ------------------------------------------------

_KEYWORDS = {"var", "dbrp", "TRUE", "FALSE", "AND", "OR"}
names = st.from_regex(r"\A[A-Za-z][A-Za-z0-9_]{0,8}\Z").filter(lambda n: n not in _KEYWORDS)
texts = st.text(st.characters(min_codepoint=1, max_codepoint=0xD7FF), max_size=12)
comment_lines = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xD7FF), max_size=20).map(
    lambda text: ("//" + text).rstrip()
)
comments = st.none() | st.lists(comment_lines, min_size=1, max_size=3).map(
    lambda lines: Comment(tuple(lines))
)


def _regex_ok(pattern: str) -> bool:
    try:
        re.compile(pattern)
    except re.error:
        return False
    return True


numbers = st.one_of(
    st.integers(0, 2**63 - 1).map(lambda n: NumberLiteral(n, False)),
    st.floats(0, 1e20, allow_nan=False, allow_infinity=False).map(
        lambda f: NumberLiteral(abs(f), True)
    ),
)
durations = st.builds(
    lambda n, unit: DurationLiteral(n * NS_PER_UNIT[unit], f"{n}{unit}"),
    st.integers(0, 10**4),
    st.sampled_from(["u", "µ", "ms", "s", "m", "h", "d", "w"]),
)
strings = st.builds(StringLiteral, texts, st.booleans()).filter(
    lambda s: not (s.value.endswith("\\") and "'''" in s.value)
)
references = st.builds(Reference, texts.filter(lambda t: not t.endswith("\\")))
regexes = st.builds(
    RegexLiteral, st.text(st.sampled_from("ab/.^$()*+?|"), min_size=1, max_size=8)
).filter(lambda r: _regex_ok(r.pattern))
atoms = st.one_of(
    numbers,
    durations,
    strings,
    st.builds(BoolLiteral, st.booleans()),
    references,
    st.builds(Identifier, names),
    regexes,
    st.just(Star()),
)
operators = st.sampled_from(sorted(PRECEDENCE, key=lambda t: t.name))


def _extend(children: st.SearchStrategy[Expression]) -> st.SearchStrategy[Expression]:
    return st.one_of(
        st.builds(Unary, st.sampled_from([T.MINUS, T.NOT]), children),
        st.builds(Binary, operators, children, children),
        st.builds(FunctionCall, names, st.lists(children, max_size=3).map(tuple)),
    )


primaries = st.recursive(atoms, _extend, max_leaves=8)
arguments = st.one_of(
    primaries,
    st.builds(Lambda, primaries),
    st.builds(
        ListLiteral,
        st.lists(st.one_of(strings, st.builds(Identifier, names), st.just(Star())), max_size=3).map(
            tuple
        ),
    ),
)


@st.composite
def links(draw: st.DrawFn) -> ChainLink:
    operator = draw(st.sampled_from(["|", ".", "@"]))
    args: tuple[Expression, ...] | None = draw(st.lists(arguments, max_size=3).map(tuple))
    if operator != "|" and draw(st.booleans()):
        args = None
    return ChainLink(operator, draw(names), args, draw(comments))


chains = st.builds(
    Chain,
    st.builds(Identifier, st.sampled_from(["batch", "stream", "data"])),
    st.lists(links(), min_size=1, max_size=6).map(tuple),
)
statements: st.SearchStrategy[Statement] = st.one_of(
    st.builds(ExpressionStatement, chains, comments),
    st.builds(Declaration, names, st.one_of(arguments, chains), comments),
    st.builds(TypeDeclaration, names, names, comments),
    st.builds(
        Dbrp,
        texts.filter(lambda t: not t.endswith("\\")),
        texts.filter(lambda t: not t.endswith("\\")),
        comments,
    ),
)
programs = st.builds(Program, st.lists(statements, max_size=5).map(tuple), comments)


@settings(max_examples=300, deadline=None)
@given(programs)
def test_generated_programs_round_trip(program: Program) -> None:
    text = format(program)
    assert parse(text) == program
    assert format(parse(text)) == text


_SNIPPETS = [
    "batch", "|", ".", "@", "query", "(", ")", ",", "'q'", "'''x'''", '"r"', "1", "2.5", "010",
    "1h", "-", "!", "+", "*", "/", "/re/", "=~", "==", "<", "AND", "OR", "TRUE", "lambda:",
    "[", "]", "var", "x", "=", "dbrp", "// c\n", "\n", "int",
]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_SNIPPETS), max_size=14))
def test_whatever_parses_round_trips(pieces: list[str]) -> None:
    source = " ".join(pieces)
    try:
        program = parse(source)
    except TickScriptError:
        return  # token soup that does not parse must fail with TickScriptError, nothing else
    assert parse(format(program)) == program
