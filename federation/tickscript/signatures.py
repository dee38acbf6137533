"""The node table: every node kind the project's pipelines use, with the arguments of its
chaining methods and property methods, as Kapacitor 1.5.7 defines them."""

from __future__ import annotations

from dataclasses import dataclass

STRING, DURATION, INT, FLOAT, NUMBER, LAMBDA, ANY = (
    "string",
    "duration",
    "int",
    "float",
    "number",
    "lambda",
    "any",
)


@dataclass(frozen=True)
class Signature:
    """Argument kinds: `fixed` first, then any number (at least `minimum`) of `variadic`."""

    fixed: tuple[str, ...] = ()
    variadic: str | None = None
    minimum: int = 0


NO_ARGUMENTS = Signature()
ONE_STRING = Signature((STRING,))
STRINGS = Signature(variadic=STRING, minimum=1)
AGGREGATE_PROPERTIES = {"as": ONE_STRING, "quiet": NO_ARGUMENTS}
SELECTOR_PROPERTIES = {**AGGREGATE_PROPERTIES, "usePointTimes": NO_ARGUMENTS}

SELECTORS = frozenset({"percentile", "min", "max", "first", "last", "top", "bottom"})
UDF = "@udf"

# Property methods of every node kind the project's pipelines use.
PROPERTIES: dict[str, dict[str, Signature]] = {
    "batch": {},
    "stream": {},
    "query": {
        "period": Signature((DURATION,)),
        "every": Signature((DURATION,)),
        "offset": Signature((DURATION,)),
        "align": NO_ARGUMENTS,
        "alignGroup": NO_ARGUMENTS,
        "groupBy": Signature(variadic=ANY),
        "groupByMeasurement": NO_ARGUMENTS,
        "fill": Signature((ANY,)),
        "cluster": ONE_STRING,
        "cron": ONE_STRING,
        "quiet": NO_ARGUMENTS,
    },
    "from": {
        "database": ONE_STRING,
        "retentionPolicy": ONE_STRING,
        "measurement": ONE_STRING,
        "where": Signature((LAMBDA,)),
        "groupBy": Signature(variadic=ANY),
        "truncate": Signature((DURATION,)),
        "round": Signature((DURATION,)),
        "quiet": NO_ARGUMENTS,
    },
    "influxDBOut": {
        "cluster": ONE_STRING,
        "database": ONE_STRING,
        "retentionPolicy": ONE_STRING,
        "measurement": ONE_STRING,
        "tag": Signature((STRING, STRING)),
        "precision": ONE_STRING,
        "writeConsistency": ONE_STRING,
        "buffer": Signature((INT,)),
        "flushInterval": Signature((DURATION,)),
        "create": NO_ARGUMENTS,
        "quiet": NO_ARGUMENTS,
    },
    "eval": {
        "as": STRINGS,
        "tags": STRINGS,
        "keep": Signature(variadic=STRING),
        "quiet": NO_ARGUMENTS,
    },
    "where": {"quiet": NO_ARGUMENTS},
    "delete": {"field": ONE_STRING, "tag": ONE_STRING, "quiet": NO_ARGUMENTS},
    "default": {
        "field": Signature((STRING, ANY)),
        "tag": Signature((STRING, STRING)),
        "quiet": NO_ARGUMENTS,
    },
    "log": {"level": ONE_STRING, "prefix": ONE_STRING, "quiet": NO_ARGUMENTS},
    "groupBy": {"exclude": STRINGS, "byMeasurement": NO_ARGUMENTS, "quiet": NO_ARGUMENTS},
    "count": AGGREGATE_PROPERTIES,
    "sum": AGGREGATE_PROPERTIES,
    "mean": AGGREGATE_PROPERTIES,
    **{selector: SELECTOR_PROPERTIES for selector in SELECTORS},
    "httpOut": {"quiet": NO_ARGUMENTS},
    # The project's aggregation UDF (named by LintContext.udf_name) and its options. Kapacitor
    # checks every UDF option call against a fixed list of value types, so list-valued options
    # are single-valued and repeated (`.dimension('a').dimension('b')`).
    UDF: {
        "aggregation": ONE_STRING,
        "dc": ONE_STRING,
        "field": ONE_STRING,
        "dimension": ONE_STRING,
        "window": Signature((DURATION,)),
        "accuracy": Signature((FLOAT,)),
        "percentile": Signature((FLOAT,)),
        "minGroupEvents": Signature((INT,)),
        "version": ONE_STRING,
        # Detection mode (`tickscripts/detection.tick.j2`).
        "detection": ONE_STRING,
        "mode": ONE_STRING,
        "key": ONE_STRING,
        "distinct": ONE_STRING,
        "atLeast": Signature((INT,)),
        "factor": Signature((FLOAT,)),
    },
}

# Chaining methods (`|name(...)`) and their arguments.
CHAINING: dict[str, Signature] = {
    "query": ONE_STRING,
    "from": NO_ARGUMENTS,
    "eval": Signature(variadic=LAMBDA, minimum=1),
    "where": Signature((LAMBDA,)),
    "delete": NO_ARGUMENTS,
    "default": NO_ARGUMENTS,
    "log": NO_ARGUMENTS,
    "groupBy": Signature(variadic=ANY),
    "count": ONE_STRING,
    "sum": ONE_STRING,
    "mean": ONE_STRING,
    "min": ONE_STRING,
    "max": ONE_STRING,
    "first": ONE_STRING,
    "last": ONE_STRING,
    "percentile": Signature((STRING, FLOAT)),
    "top": Signature((INT, STRING), variadic=STRING),
    "bottom": Signature((INT, STRING), variadic=STRING),
    "httpOut": ONE_STRING,
    "influxDBOut": NO_ARGUMENTS,
}

SOURCE_CHILDREN = {"batch": "query", "stream": "from"}
# Nodes a selector can reach its query through without the raw points losing fields.
FIELD_PRESERVING = frozenset({"eval", "where", "groupBy", "default", "log"})
# Nodes that pass points on under the names they arrived with.
NAME_PRESERVING = frozenset({"where", "delete", "default", "log"})
