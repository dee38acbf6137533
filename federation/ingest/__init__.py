"""Ingest: a JSON event stream into a DC's raw InfluxDB database, schema-checked, nothing lost.

    federation ingest --dc dub1 < events.jsonl

One JSON object per line becomes one line-protocol point, by a schema declared beside the
policies (`policies/schemas/<measurement>.yaml`, see `schema`) and checked against the DC's
region policy (personal-data keys are fields, never tags). Points are written in batches to the
DC's raw database under the region's raw retention policy; a batch counts only once InfluxDB
answered 204. Lines that cannot become points, or that InfluxDB refuses, go to a dead-letter file
with their line number and a reason code (`Reason`), and the stream goes on. Equal timestamps in
one series are kept apart deterministically (`TieBreaker`), so ingesting the same input twice
writes the same points.

Modules: `schema` (the schema model and its checks), `encode` (the per-event hot path and the
tie-break), `writer` (retries, splitting, dead letters, the summary), `pipeline` (reading,
batching, backpressure, and `ingest` itself).
"""

from __future__ import annotations

from federation.ingest.encode import Encoder, Reason, Rejected, TieBreaker
from federation.ingest.pipeline import Source, default_dead_letter, ingest
from federation.ingest.schema import (
    SCHEMAS_DIR,
    EventSchema,
    FieldSpec,
    FieldType,
    TagSpec,
    TimeFormat,
    TimestampSpec,
    load_schema,
    policy_problems,
    schema_path,
)
from federation.ingest.writer import (
    INGEST_RETRY,
    DeadLetter,
    IngestAborted,
    IngestError,
    IngestInterrupted,
    IngestSummary,
    purge_dead_letters,
)

__all__ = [
    "INGEST_RETRY",
    "SCHEMAS_DIR",
    "DeadLetter",
    "Encoder",
    "EventSchema",
    "FieldSpec",
    "FieldType",
    "IngestAborted",
    "IngestError",
    "IngestInterrupted",
    "IngestSummary",
    "Reason",
    "Rejected",
    "Source",
    "TagSpec",
    "TieBreaker",
    "TimeFormat",
    "TimestampSpec",
    "default_dead_letter",
    "ingest",
    "load_schema",
    "policy_problems",
    "purge_dead_letters",
    "schema_path",
]
