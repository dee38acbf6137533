"""The TICKscript linter: the rendered example lints clean, and every rule fires."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.core.durations import NS_PER_UNIT
from federation.tickscript import RULES, LintContext, LintProblem, lint

CTX = LintContext(
    window_ns=NS_PER_UNIT["h"],
    personal_keys=frozenset({"sender", "recipient", "client_ip"}),
    value_field="latency_ms",
)

QUERY = (
    '\'\'\'SELECT "latency_ms", "direction"::tag, "mailer"::tag, "customer"::tag '
    'FROM "mail"."raw_30d"."delivery"\'\'\''
)


def branch(offset: str, query: str = QUERY) -> str:
    return f"""
batch
    |query({query})
        .period(1h)
        .every(1h)
        .offset({offset})
        .align()
    @fedagg()
        .aggregation('delivery_latency')
        .dc('dub1')
        .field('latency_ms')
        .dimension('direction')
        .dimension('mailer')
        .dimension('customer')
        .window(1h)
        .accuracy(0.01)
        .percentile(50.0)
        .percentile(90.0)
        .percentile(95.0)
        .percentile(99.0)
        .percentile(99.9)
        .minGroupEvents(5)
        .version('3f2a9c0d1e7b')
    |influxDBOut()
        .cluster('federation_gateway')
        .database('federation')
        .retentionPolicy('agg_400d')
        .tag('dc', 'dub1')
"""


HEADER = """\
// federation plan delivery_latency dc=dub1 version=3f2a9c0d1e7b
// Rendered by federation from tickscripts/aggregation.tick.j2; changes made here are overwritten.
dbrp "mail"."raw_30d"
"""
CLEAN = HEADER + branch("0s") + branch("1h") + branch("2h")


def rules(source: str, ctx: LintContext | None = CTX) -> list[str]:
    return [problem.rule for problem in lint(source, ctx)]


def only(source: str, rule: str, ctx: LintContext | None = CTX) -> LintProblem:
    """The script yields exactly one problem, of `rule`; return it."""
    problems = lint(source, ctx, file="t.tick")
    assert [p.rule for p in problems] == [rule], problems
    return problems[0]


def test_clean_fixture_lints_clean_with_and_without_context() -> None:
    assert lint(CLEAN, CTX) == []
    assert lint(CLEAN) == []


def test_problems_print_as_file_line_column() -> None:
    problem = only(CLEAN.replace(".period(1h)", ".period(2h)", 1), "period-window")
    assert str(problem).startswith("t.tick:7:9: period-window: ")


def test_syntax_error_is_one_problem_and_never_raises() -> None:
    script = CLEAN.replace(".offset(1h)", ".offset(1h30m)")
    problem = only(script, "syntax")
    before = script[: script.index("1h30m") + 2]
    assert (problem.line, problem.column) == (
        before.count("\n") + 1,
        len(before.split("\n")[-1]) + 1,
    )
    assert "1h + 30m" in problem.message
    problem = only("batch|query('''x", "syntax")
    assert (problem.line, problem.column) == (1, 13)


def test_unknown_node() -> None:
    problem = only(CLEAN.replace("@fedagg()", "|window()", 1), "unknown-node")
    assert (problem.line, problem.column) == (11, 5)
    only(CLEAN.replace("@fedagg()", "@fedagg2()", 1), "unknown-node")
    only(HEADER + branch("0s").replace("|query(", "|eval(lambda: 1)|query("), "unknown-node")


def test_unknown_property() -> None:
    problems = lint(CLEAN.replace(".align()", ".alignn()", 1), CTX)
    assert [p.rule for p in problems] == ["align", "unknown-property"]
    assert "alignGroup" in problems[1].message
    only(CLEAN.replace(".minGroupEvents(5)", ".minEvents(5)", 1), "unknown-property")
    only(CLEAN.replace(".tag('dc', 'dub1')", ".tags('dc', 'dub1')", 1), "unknown-property")


def test_operator_hints() -> None:
    problem = only(CLEAN.replace(".align()", "|align()", 1), "operator")
    assert "'.align" in problem.message
    problem = only(CLEAN.replace("|influxDBOut()", ".influxDBOut()", 1), "operator")
    assert "'|influxDBOut" in problem.message
    problem = only(CLEAN.replace("@fedagg()", "|fedagg()", 1), "operator")
    assert "'@fedagg" in problem.message


def test_argument_types() -> None:
    double = CLEAN.replace(".database('federation')", '.database("federation")', 1)
    problem = only(double, "argument")
    assert "double quotes" in problem.message
    only(CLEAN.replace(".accuracy(0.01)", ".accuracy(1)", 1), "argument")
    only(CLEAN.replace(".period(1h)", ".period(3600)", 1), "argument")


def test_task_type() -> None:
    stream = "dbrp \"mail\".\"raw_30d\"\nstream|from().measurement('delivery')|httpOut('x')\n"
    assert only(stream, "task-type", None).line == 2
    mixed = CLEAN + "\nstream|from()|httpOut('x')\n"
    assert "mix" in only(mixed, "task-type").message
    only('dbrp "a"."b"\n', "task-type")
    only(CLEAN + "\nvar x = 5\nx|httpOut('y')\n", "task-type")


def test_does_nothing() -> None:
    only('dbrp "mail"."raw_30d"\nbatch\n', "does-nothing")
    query_only = HEADER + "batch|query(" + QUERY + ").period(1h).every(1h).align()\n"
    only(query_only, "does-nothing")


def test_query_syntax() -> None:
    only(CLEAN.replace("SELECT", "SELEKT", 1), "query-syntax")
    only(CLEAN.replace('"delivery"', '"delivery"; DROP DATABASE "mail"', 1), "query-syntax")


def test_query_time_condition_points_into_the_query() -> None:
    script = HEADER + branch("0s", QUERY[:-3] + " WHERE time > now() - 1h'''")
    problem = only(script, "query-time-condition")
    assert "window" in problem.message
    assert problem.line == 6
    assert script.splitlines()[5][problem.column - 1 :].startswith("time > now()")


def test_query_group_by() -> None:
    grouped = QUERY[:-3] + " GROUP BY \"mailer\"'''"
    only(HEADER + branch("0s", grouped), "query-group-by")
    only(CLEAN.replace(".align()", ".align()\n        .groupBy('mailer')", 1), "query-group-by")


def test_query_from_must_be_fully_qualified() -> None:
    only(CLEAN.replace('"mail"."raw_30d"."delivery"', '"delivery"', 1), "query-from-unqualified")
    only(
        CLEAN.replace('"mail"."raw_30d"."delivery"', '"mail".."delivery"', 1),
        "query-from-unqualified",
    )


def test_query_dbrp_must_be_declared() -> None:
    problems = lint(CLEAN.replace('dbrp "mail"."raw_30d"', 'dbrp "mail"."autogen"'), CTX)
    assert [p.rule for p in problems] == ["query-dbrp"] * 3
    assert (problems[0].line, problems[0].column) == (6, QUERY.index('"mail"') + 12)
    assert rules(CLEAN.replace('dbrp "mail"."raw_30d"\n', "")) == ["query-dbrp"] * 3


def test_period_window() -> None:
    only(CLEAN.replace(".period(1h)", ".period(2h)", 1), "period-window")
    only(CLEAN.replace("        .period(1h)\n", "", 1), "period-window", None)


def test_every_window() -> None:
    only(CLEAN.replace(".every(1h)", ".every(30m)", 1), "every-window")
    only(CLEAN.replace(".every(1h)", ".every(30m)", 1), "every-window", None)
    assert "every-window" in rules(CLEAN.replace(".every(1h)", ".cron('0 * * * *')", 1))


def test_offset_multiple() -> None:
    only(CLEAN.replace(".offset(1h)", ".offset(90m)", 1), "offset-multiple")
    assert lint(CLEAN.replace(".offset(1h)", ".offset(60m)", 1), CTX) == []


def test_align() -> None:
    problem = only(CLEAN.replace("        .align()\n", "", 1), "align")
    assert (problem.line, problem.column) == (6, 5)


def test_percentile_float() -> None:
    script = HEADER + (
        'batch\n    |query(\'\'\'SELECT "latency_ms" FROM "mail"."raw_30d"."delivery"\'\'\')\n'
        "        .period(1h).every(1h).align()\n"
        "    |percentile('latency_ms', 95)\n"
        "    |influxDBOut().database('d').retentionPolicy('r').measurement('m')\n"
    )
    problem = only(script, "percentile-float")
    assert (problem.line, problem.column) == (7, 31)
    assert lint(script.replace("95)", "95.0)"), CTX) == []


@pytest.mark.parametrize(
    ("removed", "rule"),
    [
        ("        .database('federation')\n", "influxdbout-database"),
        ("        .retentionPolicy('agg_400d')\n", "influxdbout-rp"),
    ],
)
def test_influxdbout_targets(removed: str, rule: str) -> None:
    only(CLEAN.replace(removed, "", 1), rule)


def test_influxdbout_measurement_needed_unless_the_udf_names_points() -> None:
    script = CLEAN.replace(
        "    @fedagg()", "    |eval(lambda: \"latency_ms\").as('v')\n    @fedagg()", 1
    )
    assert lint(script, CTX) == []
    without_udf = HEADER + (
        'batch\n    |query(\'\'\'SELECT "latency_ms" FROM "mail"."raw_30d"."delivery"\'\'\')\n'
        "        .period(1h).every(1h).align()\n"
        "    |count('latency_ms')\n"
        "    |influxDBOut().database('d').retentionPolicy('r')\n"
    )
    only(without_udf, "influxdbout-measurement")


def test_pii_key_in_query_columns_and_where() -> None:
    problem = only(CLEAN.replace('"customer"::tag', '"sender"::tag', 1), "pii-key")
    assert "'sender'" in problem.message
    filtered = QUERY[:-3] + " WHERE \"recipient\" = 'x' '''"
    only(HEADER + branch("0s", filtered), "pii-key")


def test_pii_key_in_pipeline_outputs() -> None:
    only(CLEAN.replace(".dimension('mailer')", ".dimension('sender')", 1), "pii-key")  # fmt: skip
    only(CLEAN.replace(".tag('dc', 'dub1')", ".tag('client_ip', 'x')", 1), "pii-key")
    only(CLEAN.replace("    @fedagg()", "    |groupBy('recipient')\n    @fedagg()", 1), "pii-key")
    evaluated = CLEAN.replace(
        "    @fedagg()",
        "    |eval(lambda: \"direction\").as('sender').tags('sender')\n    @fedagg()",
        1,
    )
    assert rules(evaluated) == ["pii-key", "pii-key"]
    # Deleting a personal tag is how one strips it: not a problem.
    assert (
        lint(CLEAN.replace("    @fedagg()", "    |delete().tag('sender')\n    @fedagg()", 1), CTX)
        == []
    )


def test_pii_rules_need_a_context() -> None:
    assert lint(CLEAN.replace('"customer"::tag', '"sender"::tag', 1)) == []


def _selector_script(select: str) -> str:
    return HEADER + (
        f"batch\n    |query('''SELECT {select} FROM \"mail\".\"raw_30d\".\"delivery\"''')\n"
        "        .period(1h).every(1h).align()\n"
        '    |where(lambda: "latency_ms" > 0.0)\n'
        "    |percentile('latency_ms', 95.0)\n"
        "    |influxDBOut().database('d').retentionPolicy('r').measurement('m')\n"
    )


def test_pii_selector_over_raw_points_with_other_fields() -> None:
    problem = only(_selector_script('"latency_ms", "size", "mailer"::tag'), "pii-selector")
    assert "size" in problem.message
    only(_selector_script("*"), "pii-selector")
    assert lint(_selector_script('"latency_ms", "mailer"::tag'), CTX) == []


def test_every_rule_has_a_description_and_fires_in_these_tests() -> None:
    import inspect
    import sys

    source = inspect.getsource(sys.modules[__name__])
    for rule in RULES:
        assert f'"{rule}"' in source, rule


_QL_PIECES = [
    "SELECT", "FROM", "WHERE", "GROUP BY", "time", '"time"', '"sender"', '"latency_ms"', "::tag",
    "::field", ",", "*", "(", ")", ".", '"mail"', '"raw_30d"', "'x'", "=", "=~", "/a/", ";", "AS",
    "mean", "-- c\n", "1h", "now()", '"', "'",
]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_QL_PIECES), max_size=12))
def test_lint_never_raises_on_any_query_text(pieces: list[str]) -> None:
    query = " ".join(pieces).replace("'''", "")
    script = HEADER + branch("0s", "'''" + query + " '''")
    for problem in lint(script, CTX):
        assert problem.rule in RULES
        assert problem.line >= 1 and problem.column >= 1


def test_a_detection_may_send_only_the_udfs_counts_to_the_gateway() -> None:
    ctx = LintContext(
        window_ns=NS_PER_UNIT["h"], personal_keys=frozenset(), value_field="sender",
        detection_gateway="gw",
    )  # fmt: skip
    head = (
        'dbrp "mail"."raw"\n'
        "var w = batch\n"
        '    |query(\'\'\'SELECT "sender"::field FROM "mail"."raw"."delivery"\'\'\')\n'
        "        .period(1h).every(1h).align()\n"
    )
    counts = "w @fedagg().detection('d').mode('counts')\n"
    out = "    |influxDBOut().cluster('gw').database('f').retentionPolicy('r').tag('dc', 'x')\n"
    assert lint(head + counts + out, ctx) == []
    findings = counts.replace("'counts'", "'findings'")
    (problem,) = lint(head + findings + out, ctx)
    assert (problem.rule, problem.line) == ("detection-gateway", 6)
    assert "only @fedagg().mode('counts'), or @fedagg().mode('split') through" in problem.message
    # The split UDF's points reach the gateway only through the route filter, untagged.
    split = "w @fedagg().detection('d').mode('split')\n"
    where = "    |where(lambda: \"federation_to\" == 'central')\n"
    delete = "    |delete().tag('federation_to')\n"
    assert lint(head + split + where + delete + out, ctx) == []
    for hostile in (
        head + split + where.replace("'central'", "'local'") + delete + out,
        head + split + where.replace("==", "!=") + delete + out,
        head + split + delete + out,
        head + split + where + out,
        head + counts.replace("'counts'", "'split'") + out,
    ):
        (problem,) = lint(hostile, ctx)
        assert problem.rule == "detection-gateway", hostile
