"""The UDFs the emulated Kapacitor knows, as kapacitor.conf declares them, and Kapacitor's
refusal of a script that calls a UDF option the UDF does not declare."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from federation.errors import TickScriptError

UdfOptions = Mapping[str, Mapping[str, Sequence[str]]]
"""Per UDF name, its options and their value types (`STRING`, `INT`, `DOUBLE`, `DURATION`,
`BOOL`), as the UDF's Info answer declares them to Kapacitor."""


def project_udfs() -> dict[str, dict[str, list[str]]]:
    """The project's UDF as kapacitor.conf declares it: `fedagg` and the options its Info
    answer lists (federation.kapacitor.udf)."""
    from federation.kapacitor.udf import info_response
    from federation.tickscript.render import UDF_NAME

    options = info_response().info.options
    names = {0: "BOOL", 1: "INT", 2: "DOUBLE", 3: "STRING", 4: "DURATION"}
    return {UDF_NAME: {k: [names[t] for t in o.valueTypes] for k, o in options.items()}}


def udf_option_problem(script: str, udfs: UdfOptions) -> str | None:
    """Kapacitor's refusal of the first property call on a UDF node that the UDF does not
    declare, or whose literal argument has another type than declared (a var is not checked:
    its value comes with the task). None when the script parses with none of those."""
    from federation.tickscript import ast, parse

    try:
        program = parse(script, "<task>")
    except TickScriptError:
        return None
    for statement in program.statements:
        chain = getattr(statement, "value", getattr(statement, "expression", None))
        if not isinstance(chain, ast.Chain):
            continue
        options: Mapping[str, Sequence[str]] | None = None
        for link in chain.links:
            if link.operator != ".":
                options = udfs.get(link.name) if link.operator == "@" else None
                continue
            if options is None:
                continue
            where = f"line {link.line} char {link.column + 1}"
            declared = options.get(link.name)
            if declared is None:
                return f'{where}: no method or property "{link.name}" on *pipeline.UDFNode'
            for arg, expected in zip(link.args or (), declared, strict=False):
                got = _literal_type(arg)
                if got is not None and got != expected:
                    return f"{where}: unexpected arg to {link.name}, got {got} expected {expected}"
    return None


def _literal_type(arg: object) -> str | None:
    from federation.tickscript import ast

    if isinstance(arg, ast.StringLiteral):
        return "STRING"
    if isinstance(arg, ast.NumberLiteral):
        return "DOUBLE" if arg.is_float else "INT"
    if isinstance(arg, ast.DurationLiteral):
        return "DURATION"
    if isinstance(arg, ast.BoolLiteral):
        return "BOOL"
    return None
