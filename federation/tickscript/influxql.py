"""A small reader for the InfluxQL inside a TICKscript `|query('''...''')`.

Not a full parser: enough to find the SELECT columns with their `::tag`/`::field` casts, the
FROM targets, the keys the WHERE clause refers to, and any GROUP BY, with offsets into the text
so that the linter can point at the exact line and column.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

_INFLUXQL_KEYWORDS = frozenset(
    {
        "SELECT", "FROM", "WHERE", "GROUP", "BY", "AS", "AND", "OR", "NOT", "ORDER", "LIMIT",
        "OFFSET", "SLIMIT", "SOFFSET", "FILL", "INTO", "TZ", "ASC", "DESC", "TRUE", "FALSE",
    }
)  # fmt: skip
_CLAUSE_ENDS = frozenset({"GROUP", "ORDER", "LIMIT", "OFFSET", "SLIMIT", "SOFFSET", "FILL", "TZ"})
_QL_OPERATORS = (
    "::", "=~", "!~", "!=", "<>", "<=", ">=", "=", "<", ">", "+", "-", "*", "/", "%", "&", "|",
    "^", "(", ")", ",", ".", ";", ":",
)  # fmt: skip


@dataclass(frozen=True)
class _QlToken:
    kind: str  # ident, keyword, string, number, regex, param, op
    text: str
    value: str
    offset: int


class QueryError(Exception):
    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset


def _read_quoted(text: str, start: int, quote: str) -> tuple[str, int]:
    """Read a quoted InfluxQL token at `start`; return its unescaped value and end offset."""
    chars: list[str] = []
    index = start + 1
    while index < len(text):
        char = text[index]
        if char == "\\" and index + 1 < len(text):
            following = text[index + 1]
            chars.append({"n": "\n", "\\": "\\", quote: quote}.get(following, "\\" + following))
            index += 2
            continue
        if char == quote:
            return "".join(chars), index + 1
        if char == "\n" and quote == "'":
            break
        chars.append(char)
        index += 1
    what = "string" if quote == "'" else "quoted identifier"
    raise QueryError(f"unterminated {what}", start)


def _ql_tokens(text: str) -> list[_QlToken]:
    tokens: list[_QlToken] = []
    index = 0
    while index < len(text):
        char = text[index]
        start = index
        if char.isspace():
            index += 1
            continue
        if text.startswith("--", index):
            newline = text.find("\n", index)
            index = len(text) if newline == -1 else newline
            continue
        if char in "\"'":
            value, index = _read_quoted(text, index, char)
            kind = "ident" if char == '"' else "string"
            tokens.append(_QlToken(kind, text[start:index], value, start))
            continue
        if char.isdigit():
            while index < len(text) and (text[index].isalnum() or text[index] in ".µ"):
                index += 1
            tokens.append(_QlToken("number", text[start:index], text[start:index], start))
            continue
        if char.isalpha() or char == "_" or char == "$":
            index += 1
            while index < len(text) and (text[index].isalnum() or text[index] == "_"):
                index += 1
            word = text[start:index]
            if char == "$":
                tokens.append(_QlToken("param", word, word, start))
            elif word.upper() in _INFLUXQL_KEYWORDS:
                tokens.append(_QlToken("keyword", word, word.upper(), start))
            else:
                tokens.append(_QlToken("ident", word, word, start))
            continue
        previous = tokens[-1] if tokens else None
        if char == "/" and previous is not None and _regex_may_follow(previous):
            end = index + 1
            while end < len(text) and text[end] != "/":
                end += 2 if text[end] == "\\" else 1
            if end >= len(text):
                raise QueryError("unterminated regex", start)
            index = end + 1
            tokens.append(_QlToken("regex", text[start:index], text[start + 1 : end], start))
            continue
        operator = next((op for op in _QL_OPERATORS if text.startswith(op, index)), None)
        if operator is None:
            raise QueryError(f"unexpected character {char!r}", start)
        index += len(operator)
        tokens.append(_QlToken("op", operator, operator, start))
    return tokens


def _regex_may_follow(token: _QlToken) -> bool:
    if token.kind == "keyword":
        return token.value == "FROM"
    return token.kind == "op" and token.value in ("=~", "!~", ".", ",")


@dataclass
class _Column:
    name: str
    cast: str | None
    offset: int
    alias: bool = False


@dataclass
class Query:
    columns: list[_Column] = field(default_factory=list)
    wildcard_offset: int | None = None
    sources: list[tuple[list[str], int]] = field(default_factory=list)
    where_refs: list[tuple[str, int]] = field(default_factory=list)
    group_by_offset: int | None = None


def _references(tokens: list[_QlToken]) -> Iterator[tuple[int, _QlToken]]:
    """Identifiers that name keys (not functions), with their index in `tokens`."""
    for index, token in enumerate(tokens):
        if token.kind != "ident":
            continue
        following = tokens[index + 1] if index + 1 < len(tokens) else None
        if following is not None and following.value == "(" and token.text[0] != '"':
            continue
        previous = tokens[index - 1] if index > 0 else None
        if previous is not None and previous.value == "::":
            continue
        yield index, token


def _split_top_level(tokens: list[_QlToken]) -> list[list[_QlToken]]:
    parts: list[list[_QlToken]] = [[]]
    depth = 0
    for token in tokens:
        if token.value == "(":
            depth += 1
        elif token.value == ")":
            depth -= 1
        if token.value == "," and token.kind == "op" and depth == 0:
            parts.append([])
        else:
            parts[-1].append(token)
    return parts


def parse_query(text: str) -> Query:
    tokens = _ql_tokens(text)
    if not tokens or tokens[0].value != "SELECT":
        offset = tokens[0].offset if tokens else 0
        raise QueryError("the query must be one SELECT statement", offset)
    for index, token in enumerate(tokens):
        if token.value == ";" and index + 1 < len(tokens):
            raise QueryError("the query must be ONE SELECT statement", tokens[index + 1].offset)
    tokens = [token for token in tokens if token.value != ";"]
    clauses: dict[str, tuple[int, int]] = {}
    depth = 0
    current = "SELECT"
    begin = 1
    for index, token in enumerate(tokens[1:], start=1):
        if token.value == "(":
            depth += 1
        elif token.value == ")":
            depth -= 1
        if depth or token.kind != "keyword":
            continue
        name = token.value
        if name in ("FROM", "WHERE", "INTO") or name in _CLAUSE_ENDS:
            clauses.setdefault(current, (begin, index))
            current, begin = name, index + 1
    clauses.setdefault(current, (begin, len(tokens)))
    if "FROM" not in clauses:
        raise QueryError("the query has no FROM clause", len(text))
    query = Query()
    start, end = clauses["SELECT"]
    for part in _split_top_level(tokens[start:end]):
        _read_column(part, query)
    start, end = clauses["FROM"]
    for part in _split_top_level(tokens[start:end]):
        query.sources.append(_read_source(part, tokens[start - 1].offset))
    if "WHERE" in clauses:
        start, end = clauses["WHERE"]
        where = tokens[start:end]
        query.where_refs = [(token.value, token.offset) for _, token in _references(where)]
    if "GROUP" in clauses:
        query.group_by_offset = tokens[clauses["GROUP"][0] - 1].offset
    return query


def _read_column(part: list[_QlToken], query: Query) -> None:
    if not part:
        raise QueryError("empty column in SELECT", 0)
    for index, token in enumerate(part):
        previous = part[index - 1] if index else None
        if (
            token.value == "*"
            and token.kind == "op"
            and (previous is None or previous.value == "(")
        ):
            query.wildcard_offset = token.offset
    for index, token in _references(part):
        previous = part[index - 1] if index else None
        alias = previous is not None and previous.value == "AS"
        cast = None
        if index + 2 < len(part) and part[index + 1].value == "::":
            cast = part[index + 2].value.lower()
        query.columns.append(_Column(token.value, cast, token.offset, alias))


def _read_source(part: list[_QlToken], fallback: int) -> tuple[list[str], int]:
    if not part:
        raise QueryError("empty FROM target", fallback)
    if part[0].value == "(":
        return [], part[0].offset
    names: list[str] = [""]
    for token in part:
        if token.value == "." and token.kind == "op":
            names.append("")
        elif token.kind in ("ident", "regex", "keyword") and names[-1] == "":
            names[-1] = token.text if token.kind == "regex" else token.value
        else:
            raise QueryError(f"unexpected {token.text!r} in FROM", token.offset)
    return names, part[0].offset
