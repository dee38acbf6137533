"""TICKscript: a parser and canonical printer faithful to Kapacitor, and the project's linter.

parse(source, file) -> Program          raises TickScriptError at file:line:column
format(program) -> str                  canonical text; parse(format(p)) == p
lint(source, ctx, file) -> [LintProblem]  never raises; syntax errors become problems
"""

from __future__ import annotations

from federation.tickscript.ast import Comment, Program
from federation.tickscript.lexer import Token, TokenType, tokenize
from federation.tickscript.lint import RULES, LintContext, LintProblem, lint
from federation.tickscript.parser import format, format_expression, format_string, parse

__all__ = [
    "RULES",
    "Comment",
    "LintContext",
    "LintProblem",
    "Program",
    "Token",
    "TokenType",
    "format",
    "format_expression",
    "format_string",
    "lint",
    "parse",
    "tokenize",
]
