"""The gateway's rules: what a batch may hold, derived from the plans the ledger knows.

A batch is checked as a whole and refused as a whole — nothing forwarded — when any point
breaks a rule; the answer names the rule, the measurement, the key and the line, never the
offending value, and the log line says only rule, DC, measurement and key. Rules (HTTP status;
`auth`, `size`, `database` and `central` are the HTTP face's, `line-protocol` the reader's):

    auth              401  missing or wrong DC credentials
    dc-identity       403  a point's `dc` tag is not the authenticated DC
    size              413  body (or its gunzipped form) over the limit
    database          400  db/rp other than the central database and the DC region's RP
    line-protocol     400  the body does not parse (line:column)
    measurement       400  not an output of a plan of that DC
    tag-key           400  a tag key outside the plan's schema, or a schema tag missing
    field-key         400  a field key outside the plan's schema, or a schema field missing
    field-type        400  a field of the wrong type (integer vs float vs string vs boolean)
    plan-version      400  a manifest naming a version the ledger does not know for it
    timestamp         400  a point not at the start of one of its plan's windows, or of a
                           window that has not ended yet by the coordinator's clock (or by
                           the DC's, as `clocks` estimates it, when that is behind)
    personal-data     400  a tag value or string field that looks like an e-mail or IP address
    k-anonymity       400  a summary whose `count` is below the plan's min_group_events
    detection-counts  400  a detection's count point whose counts contradict each other (a
                           detection's schema admits the tag `dc` alone: no key, no value)
    sketch            400  a `sketch` that does not decode, has a foreign accuracy, or whose
                           total differs from `count`
    stale-reshipment  400  a manifest with an older run or fewer events than the ledger holds
    central           400  central refused the batch as invalid (e.g. a field type conflict)
                      503  central is down or failed: nothing recorded, the sender retries

Accepted batches are forwarded byte for byte to central; their manifests update the ledger only
after central answered 204.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from federation.coordinator.desired import PlanBook
from federation.coordinator.gateway.detections import detection_counts_problem
from federation.coordinator.gateway.parse import parse
from federation.coordinator.gateway.refusal import Refusal
from federation.coordinator.gateway.wire import Columns, Line, Shape, sketch_checker
from federation.coordinator.tracking import Manifest
from federation.core.detection_plan import DetectionPlan
from federation.core.pii import personal_data_kind
from federation.core.plan import MANIFEST_MEASUREMENT, AggregationPlan, FieldType
from federation.core.points import FieldValue, Point
from federation.core.sketch import Sketch, total_counts
from federation.errors import SketchDecodeError

_TYPE_NAMES: dict[type, FieldType] = {
    int: "integer",
    float: "float",
    str: "string",
    bool: "boolean",
}
_CLEAN_CACHE_LIMIT = 200_000
_SHAPE_CACHE_LIMIT = 10_000


@dataclass
class _PlanCheck:
    plan: AggregationPlan | DetectionPlan
    version: str
    summary_tags: frozenset[str]
    summary_fields: Mapping[str, FieldType]
    sketch_total: Any


def _batch_totals(
    plans: Mapping[str, list[_PlanCheck]], lines: Sequence[Line]
) -> dict[int, tuple[float, int | None]]:
    """The sketch totals of a batch's summary points, checked together per aggregation (one
    vectorised pass instead of one decode per point), keyed by id of the line, with the
    accuracy they were read with; the per-point checks fall back to one string at a time."""
    by_measurement: dict[str, list[Line]] = {}
    for ln in lines:
        if ln.point.measurement in plans and isinstance(ln.point.fields.get("sketch"), str):
            by_measurement.setdefault(ln.point.measurement, []).append(ln)
    totals: dict[int, tuple[float, int | None]] = {}
    for measurement, group in by_measurement.items():
        plan = plans[measurement][0].plan
        if isinstance(plan, DetectionPlan):  # a detection has no sketch: refused point by point
            continue
        alpha = plan.accuracy
        counts = total_counts([ln.point.fields["sketch"] for ln in group], alpha)
        for ln, count in zip(group, counts, strict=True):
            totals[id(ln)] = (alpha, count)
    return totals


def _entry_for(
    entries: Sequence[_PlanCheck],
    versions: Mapping[tuple[str, int], str],
    aggregation: str,
    start_ns: int,
) -> _PlanCheck:
    """The plan a summary of this window is checked against: the version its batch's manifest
    names, else the first the DC may ship."""
    version = versions.get((aggregation, start_ns))
    return next((e for e in entries if e.version == version), entries[0])


def _entry_for_point(
    entries: Sequence[_PlanCheck], versions: Mapping[tuple[str, int], str], point: Point
) -> _PlanCheck:
    """`_entry_for` a summary point; where its batch names no version (an agent ships a
    window's manifest alone, after its summaries), the version whose accuracy its sketch is
    written with: two versions that differ only in accuracy (a rollout changed it, and the
    previous version's windows are still shipped: look-back, backfills) have the same keys."""
    entry = _entry_for(entries, versions, point.measurement, point.time_ns)
    sketch = point.fields.get("sketch")
    if (point.measurement, point.time_ns) in versions or not isinstance(sketch, str):
        return entry
    for candidate in (entry, *entries):
        plan = candidate.plan
        if (
            isinstance(plan, AggregationPlan)
            and total_counts([sketch], plan.accuracy)[0] is not None
        ):
            return candidate
    return entry


@dataclass(frozen=True, slots=True)
class _Fitting:
    """The plans a summary shape fits, and the string fields (but `sketch`) its points carry:
    None when the shape is not known, so every field is looked at."""

    entries: list[_PlanCheck]
    strings: list[str] | None


@dataclass
class CheckedBatch:
    """A batch that passed every content check: how many points it holds, the lines read
    whole (all of them, or those outside its main shape when it was read column by column),
    and the manifests it carries."""

    points: int
    lines: list[Line]
    manifests: list[Manifest] = field(default_factory=list)


class GatewayChecker:
    """The content rules for every DC, derived from the plans the ledger knows.

    Thread-safe: it holds only read-only plan data and caches of already-checked shapes and
    tag values.
    """

    def __init__(self, book: PlanBook) -> None:
        self._plans: dict[str, dict[str, list[_PlanCheck]]] = {}
        checkers: dict[float, Any] = {}
        for (dc, aggregation), plans in book.items():
            entries = []
            for plan in plans:
                if isinstance(plan, DetectionPlan):  # its counts: the tag `dc` alone
                    schema = plan.count_schema
                    entries.append(
                        _PlanCheck(plan, plan.version, frozenset(schema.tags), schema.fields, None)
                    )
                    continue
                schema = plan.summary_schema
                if plan.accuracy not in checkers:
                    checkers[plan.accuracy] = sketch_checker(plan.accuracy)
                entries.append(
                    _PlanCheck(
                        plan,
                        plan.version,
                        frozenset(schema.tags),
                        dict(schema.fields),
                        checkers[plan.accuracy],
                    )
                )
            self._plans.setdefault(dc, {})[aggregation] = entries
        self._shapes: dict[tuple[Any, ...], list[_PlanCheck] | Refusal] = {}
        self._clean: set[str] = set()
        self._lock = threading.Lock()

    def plans_for(self, dc: str) -> Mapping[str, list[_PlanCheck]]:
        return self._plans.get(dc, {})

    def check(self, dc: str, lines: Sequence[Line], *, now_ns: int | None = None) -> CheckedBatch:
        """Check every point of a batch from the authenticated `dc`; Refusal on the first
        point that breaks a rule (see the module docstring). With `now_ns`, a window that has
        not ended by then is refused: a sender whose clock runs ahead computed it too early (the
        caller passes the earlier of the coordinator's and the DC's clock, see `clocks`)."""
        plans = self._plans.get(dc, {})
        batch = CheckedBatch(len(lines), list(lines))
        versions: dict[tuple[str, int], str] = {}
        for ln in lines:
            if ln.point.measurement == MANIFEST_MEASUREMENT:
                manifest = self._check_manifest(dc, plans, ln, now_ns)
                batch.manifests.append(manifest)
                versions[(manifest.aggregation, manifest.start_ns)] = manifest.version
        totals = _batch_totals(plans, lines)
        # Lines the fast parser read carry their shape, shared by the lines of that shape: a
        # run of one shape has its keys and types checked once (the same check, same answer).
        shape: Shape | None = None
        fitting: _Fitting = _Fitting([], None)
        for ln in lines:
            if ln.point.measurement == MANIFEST_MEASUREMENT:
                continue
            if ln.shape is None or ln.shape is not shape:
                fitting = self._fitting_for(plans, ln)
                shape = ln.shape
            self._check_summary(dc, fitting, ln, versions, now_ns, totals)
        return batch

    def check_columns(
        self, dc: str, columns: Columns, *, now_ns: int | None = None
    ) -> CheckedBatch | None:
        """`check` of a body read by `read_columns`: the same batch when every point passes,
        None when any point may break a rule (`check` then says which).

        The checks of a line's shape run once, on the sample line; the identity, personal-data,
        k-anonymity and sketch checks run a column at a time; timestamps once each.
        """
        try:
            return self._check_columns(dc, columns, now_ns)
        except Refusal:
            return None

    def _check_columns(self, dc: str, columns: Columns, now_ns: int | None) -> CheckedBatch | None:
        measurement = columns.shape[0]
        if measurement == MANIFEST_MEASUREMENT:
            return None
        plans = self._plans.get(dc, {})
        # Manifests and lines of other shapes, point by point.
        rest = self.check(dc, columns.others, now_ns=now_ns)
        sample = columns.sample
        fitting = self._fitting_for(plans, sample)
        if "dc" not in columns.tag_keys or columns.tag("dc").count(dc) != columns.rows:
            return None
        versions = {(m.aggregation, m.start_ns): m.version for m in rest.manifests}
        limits = set()
        for time_ns in columns.times:
            entry = _entry_for(fitting.entries, versions, measurement, time_ns)
            if isinstance(entry.plan, DetectionPlan):  # a few points: checked one by one
                return None
            self._check_alignment(entry.plan, time_ns, measurement, sample, now_ns)
            limits.add((entry.plan.accuracy, entry.plan.min_group_events))
        if len(limits) != 1:  # plan versions of other limits side by side: point by point
            return None
        ((alpha, min_events),) = limits
        for key in columns.tag_keys:
            self._check_column(key, columns.tag(key), measurement, sample)
        for key in fitting.strings or ():
            self._check_column(key, columns.field(key), measurement, sample)
        counts = list(map(int, columns.field("count")))
        if min(counts) < min_events or total_counts(columns.field("sketch"), alpha) != counts:
            return None
        return CheckedBatch(columns.rows + rest.points, rest.lines, rest.manifests)

    # -- manifests ----------------------------------------------------------------------------

    def _check_manifest(
        self, dc: str, plans: Mapping[str, list[_PlanCheck]], ln: Line, now_ns: int | None
    ) -> Manifest:
        point = ln.point
        m = MANIFEST_MEASUREMENT
        aggregation = point.tags.get("aggregation")
        entries = plans.get(aggregation or "")
        if not entries:
            raise Refusal(
                "measurement",
                "manifest for an aggregation that is not a plan of this DC",
                measurement=m,
                key="aggregation",
                line=ln.line,
            )
        schema = entries[0].plan.manifest_schema
        self._check_keys(point.tags, frozenset(schema.tags), point.fields, schema.fields, m, ln)
        self._check_identity(dc, point.tags, m, ln)
        self._check_values(point.tags, point.fields, m, ln)
        version = point.fields["version"]
        entry = next((e for e in entries if e.version == version), None)
        if entry is None:
            raise Refusal(
                "plan-version",
                "manifest names a plan version the coordinator does not know for this "
                "DC and aggregation",
                measurement=m,
                key="version",
                line=ln.line,
            )
        self._check_alignment(entry.plan, point.time_ns, m, ln, now_ns)
        for name in ("events", "groups", "suppressed_events", "personal_value_events", "run"):
            value = point.fields[name]
            if isinstance(value, int) and value < 0:
                raise Refusal(
                    "field-type", f"{name} must not be negative", measurement=m, key=name,
                    line=ln.line,
                )  # fmt: skip
        if int(point.fields["personal_value_events"]) > int(point.fields["suppressed_events"]):
            raise Refusal(
                "field-type", "personal_value_events are part of suppressed_events, never more",
                measurement=m, key="personal_value_events", line=ln.line,
            )  # fmt: skip
        return Manifest.from_point(point)

    # -- summaries ----------------------------------------------------------------------------

    def _fitting_for(self, plans: Mapping[str, list[_PlanCheck]], ln: Line) -> _Fitting:
        """The plans a summary's measurement, keys and types fit; Refusal when none does."""
        point = ln.point
        measurement = point.measurement
        entries = plans.get(measurement)
        if not entries:
            raise Refusal(
                "measurement",
                "measurement is not an output of any plan of this DC",
                measurement=measurement,
                line=ln.line,
            )
        fitting = self._fitting(entries, point.tags, point.fields, measurement, ln)
        strings = None
        if ln.shape is not None:
            strings = [key for key, kind in ln.shape[2] if kind is str and key != "sketch"]
        return _Fitting(fitting, strings)

    def _check_summary(
        self,
        dc: str,
        fitting: _Fitting,
        ln: Line,
        versions: Mapping[tuple[str, int], str],
        now_ns: int | None,
        totals: Mapping[int, tuple[float, int | None]] | None = None,
    ) -> None:
        point = ln.point
        measurement = point.measurement
        self._check_identity(dc, point.tags, measurement, ln)
        entry = _entry_for_point(fitting.entries, versions, point)
        self._check_alignment(entry.plan, point.time_ns, measurement, ln, now_ns)
        self._check_values(point.tags, point.fields, measurement, ln, "sketch", fitting.strings)
        if isinstance(entry.plan, DetectionPlan):
            problem = detection_counts_problem(point.fields)
            if problem is not None:
                rule_key, message = problem
                raise Refusal("detection-counts", message, measurement=measurement,
                              key=rule_key, line=ln.line)  # fmt: skip
            return
        count = point.fields["count"]
        assert isinstance(count, int)
        if count < entry.plan.min_group_events:
            raise Refusal(
                "k-anonymity",
                f"a group of fewer than {entry.plan.min_group_events} events may not be exported",
                measurement=measurement,
                key="count",
                line=ln.line,
            )
        text = point.fields["sketch"]
        assert isinstance(text, str)
        known = (totals or {}).get(id(ln))
        if known is not None and known[0] == entry.plan.accuracy and known[1] is not None:
            total: int | None = known[1]
        else:
            total = entry.sketch_total(text)
        if total is None:
            try:
                total = Sketch.decode(text, expected_alpha=entry.plan.accuracy).count
            except SketchDecodeError:
                # The decoder's message quotes the start of the text, which could be anything.
                raise Refusal(
                    "sketch",
                    f"sketch does not decode with accuracy {entry.plan.accuracy!r}",
                    measurement=measurement,
                    key="sketch",
                    line=ln.line,
                ) from None
        if total != count:
            raise Refusal(
                "sketch",
                f"sketch holds {total} values but count is {count}",
                measurement=measurement,
                key="sketch",
                line=ln.line,
            )

    def _fitting(
        self,
        entries: list[_PlanCheck],
        tags: Mapping[str, str],
        fields: Mapping[str, FieldValue],
        measurement: str,
        ln: Line,
    ) -> list[_PlanCheck]:
        shape = (
            measurement,
            tuple(tags),
            tuple((k, type(v)) for k, v in fields.items()),
        )
        cached = self._shapes.get(shape)
        if cached is None:
            fitting: list[_PlanCheck] = []
            first_refusal: Refusal | None = None
            for entry in entries:
                try:
                    self._check_keys(
                        tags, entry.summary_tags, fields, entry.summary_fields, measurement, ln
                    )
                except Refusal as refusal:
                    first_refusal = first_refusal or refusal
                else:
                    fitting.append(entry)
            cached = fitting if fitting else first_refusal
            assert cached is not None
            with self._lock:
                # Bounded: every new key a sender makes up is a new shape.
                if len(self._shapes) >= _SHAPE_CACHE_LIMIT:
                    self._shapes.clear()
                self._shapes[shape] = cached
        if isinstance(cached, Refusal):
            raise Refusal(
                cached.rule,
                cached.message,
                measurement=measurement,
                key=cached.key,
                line=ln.line,
            )
        return cached

    # -- shared rules -------------------------------------------------------------------------

    @staticmethod
    def _check_keys(
        tags: Mapping[str, str],
        tag_schema: frozenset[str],
        fields: Mapping[str, FieldValue],
        field_schema: Mapping[str, FieldType],
        measurement: str,
        ln: Line,
    ) -> None:
        for key in tags:
            if key not in tag_schema:
                raise Refusal(
                    "tag-key",
                    "tag key is not in the plan's output schema",
                    measurement=measurement,
                    key=key,
                    line=ln.line,
                )
        for key in sorted(tag_schema):
            if key not in tags:
                raise Refusal(
                    "tag-key",
                    "a tag of the plan's output schema is missing",
                    measurement=measurement,
                    key=key,
                    line=ln.line,
                )
        for key, value in fields.items():
            expected = field_schema.get(key)
            if expected is None:
                raise Refusal(
                    "field-key",
                    "field key is not in the plan's output schema",
                    measurement=measurement,
                    key=key,
                    line=ln.line,
                )
            actual = _TYPE_NAMES[type(value)]
            if actual != expected:
                raise Refusal(
                    "field-type",
                    f"field must be {expected}, not {actual}",
                    measurement=measurement,
                    key=key,
                    line=ln.line,
                )
        for key in field_schema:
            if key not in fields:
                raise Refusal(
                    "field-key",
                    "a field of the plan's output schema is missing",
                    measurement=measurement,
                    key=key,
                    line=ln.line,
                )

    @staticmethod
    def _check_identity(dc: str, tags: Mapping[str, str], measurement: str, ln: Line) -> None:
        if tags.get("dc") != dc:
            raise Refusal(
                "dc-identity",
                "the dc tag differs from the authenticated DC",
                status=403,
                measurement=measurement,
                key="dc",
                line=ln.line,
            )

    @staticmethod
    def _check_alignment(
        plan: AggregationPlan | DetectionPlan,
        time_ns: int,
        measurement: str,
        ln: Line,
        now_ns: int | None,
    ) -> None:
        if time_ns % plan.window_ns:
            raise Refusal(
                "timestamp",
                "timestamp is not the start of a window of the plan",
                measurement=measurement,
                line=ln.line,
            )
        if now_ns is not None and time_ns + plan.window_ns > now_ns:
            raise Refusal(
                "timestamp",
                "the window has not ended yet (by the coordinator's clock, or the DC's)",
                measurement=measurement,
                line=ln.line,
            )

    def _check_values(
        self,
        tags: Mapping[str, str],
        fields: Mapping[str, FieldValue],
        measurement: str,
        ln: Line,
        skip: str | None = None,
        strings: Sequence[str] | None = None,
    ) -> None:
        """Every tag value, and every string field but `skip`, is checked for personal data.
        `strings`, when given, names exactly those string fields (from the line's shape)."""
        clean = self._clean
        # Nearly every value of a batch has been seen clean before: one set test proves it.
        if not clean.issuperset(tags.values()):
            for key, value in tags.items():
                if value not in clean:
                    self._check_value(key, value, measurement, ln)
        if strings is None:
            for key, field_value in fields.items():
                if isinstance(field_value, str) and key != skip and field_value not in clean:
                    self._check_value(key, field_value, measurement, ln)
            return
        for key in strings:
            field_value = fields[key]
            assert isinstance(field_value, str)
            if field_value not in clean:
                self._check_value(key, field_value, measurement, ln)

    def _check_column(self, key: str, column: Sequence[str], measurement: str, ln: Line) -> None:
        """`_check_value` of each distinct value of a column not seen clean before."""
        clean = self._clean
        if not clean.issuperset(column):
            for value in set(column).difference(clean):
                self._check_value(key, value, measurement, ln)

    def _check_value(self, key: str, value: str, measurement: str, ln: Line) -> None:
        kind = personal_data_kind(value)
        if kind is not None:
            raise Refusal(
                "personal-data",
                f"value looks like personal data ({kind})",
                measurement=measurement,
                key=key,
                line=ln.line,
            )
        with self._lock:
            if len(self._clean) >= _CLEAN_CACHE_LIMIT:
                self._clean.clear()
            self._clean.add(value)


def check_body(
    checker: GatewayChecker, dc: str, body: bytes, precision: str, now_ns: int
) -> CheckedBatch:
    """Parse and check a write body from the authenticated `dc`; Refusal when it breaks a rule.

    A plain body is checked column by column; any other body, and any body that might break a
    rule, point by point, which decides and explains.
    """
    parsed = parse(body, precision, now_ns)
    if parsed.columns is not None:
        batch = checker.check_columns(dc, parsed.columns, now_ns=now_ns)
        if batch is not None:
            return batch
    return checker.check(dc, parsed.lines, now_ns=now_ns)
