"""Render AggregationPlans into Kapacitor batch TICKscripts with Jinja.

One `Environment` with `StrictUndefined`, templates loaded from the config's `tickscripts/`, and
every value that enters a script passed through a filter registered here (`tick_string`,
`tick_duration`, …), so that templates never escape anything by hand.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import jinja2

from federation.config import FederationConfig
from federation.config.resolve import resolve_detection, resolve_plan, resolve_tracked
from federation.core.detection_plan import (
    ROUTE_CENTRAL,
    ROUTE_LOCAL,
    ROUTE_TAG,
    DetectionPlan,
    TrackedPlan,
)
from federation.core.durations import format_duration
from federation.core.plan import AggregationPlan
from federation.errors import TickScriptError
from federation.tickscript.lint import LintContext, LintProblem, lint

UDF_NAME = "fedagg"
"""The name the aggregation UDF is declared under in kapacitor.conf (`[udf.functions.fedagg]`)."""


def tick_string(value: object) -> str:
    """A single-quoted TICKscript string; `'` is the only character that needs escaping.

    TICKscript keeps every other backslash literally, so a backslash before a quote is the one
    sequence that cannot be represented; such values are refused.
    """
    text = str(value)
    if "\\'" in text or text.endswith("\\"):
        raise ValueError(f"cannot write {text!r} as a TICKscript string")
    return "'" + text.replace("'", "\\'") + "'"


def tick_query(value: object) -> str:
    """InfluxQL inside a triple-quoted TICKscript string, which takes everything literally."""
    text = str(value)
    if "'''" in text:
        raise ValueError("a query cannot contain three single quotes in a row")
    return "'''" + text + "'''"


def tick_reference(value: object) -> str:
    """A double-quoted TICKscript reference (`"db"`), as `dbrp` statements take them."""
    return '"' + str(value).replace('"', '\\"') + '"'


def tick_duration(value: object) -> str:
    """A TICKscript duration literal from nanoseconds (`1h`, `90m`); TICKscript has no `ns`."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"durations are integer nanoseconds, got {value!r}")
    text = format_duration(value)
    if text.endswith("ns"):
        raise ValueError(f"{value} ns is not expressible in TICKscript (no ns unit)")
    return text


def tick_float(value: object) -> str:
    """A TICKscript float literal: always with a `.`, never with an exponent (`95.0`, `0.01`)."""
    number = float(value)  # type: ignore[arg-type]
    if not math.isfinite(number):
        raise ValueError(f"{number} is not a finite number")
    # repr is the shortest exact spelling; Decimal writes it out without an exponent.
    text = format(Decimal(repr(number)), "f")
    if "." not in text:
        text += ".0"
    return text


def tick_int(value: object) -> str:
    """A TICKscript integer literal: decimal, no leading zero (which would make it octal)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"expected an integer, got {value!r}")
    return str(value)


FILTERS = {
    "tick_string": tick_string,
    "tick_query": tick_query,
    "tick_reference": tick_reference,
    "tick_duration": tick_duration,
    "tick_float": tick_float,
    "tick_int": tick_int,
}


def environment(templates_dir: Path) -> jinja2.Environment:
    """The one Jinja environment that renders TICKscripts."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(FILTERS)
    return env


@dataclass(frozen=True)
class RenderedTask:
    """One rendered Kapacitor task: the script plus what the task API needs to deploy it."""

    plan: AggregationPlan | DetectionPlan
    script: str

    @property
    def id(self) -> str:
        return self.plan.task_id

    @property
    def filename(self) -> str:
        return f"{self.plan.aggregation}.{self.plan.dc}.tick"

    @property
    def dbrps(self) -> list[dict[str, str]]:
        return [{"db": self.plan.database, "rp": self.plan.retention_policy}]

    def spec(self) -> dict[str, Any]:
        """The JSON task spec: id, type, dbrps and plan version (the script is beside it)."""
        return {
            "id": self.id,
            "type": "batch",
            "dbrps": self.dbrps,
            "version": self.plan.version,
            "script": self.filename,
        }

    def spec_json(self) -> str:
        return json.dumps(self.spec(), indent=2, sort_keys=True) + "\n"


def lint_context(plan: AggregationPlan) -> LintContext:
    """What the linter must know to check a script rendered from `plan`."""
    return LintContext(
        window_ns=plan.window_ns,
        personal_keys=plan.personal_keys,
        value_field=plan.value_field,
        udf_name=UDF_NAME,
    )


class RenderLintError(TickScriptError):
    """A rendered script that fails the linter: the template produced something unsafe."""

    def __init__(self, problems: list[LintProblem]) -> None:
        self.problems = problems
        first = problems[0]
        super().__init__(f"[{first.rule}] {first.message}", first.line, first.column, first.file)
        self.args = ("\n".join(str(p) for p in problems),)

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)


def _render(
    plan: AggregationPlan | DetectionPlan, templates_dir: Path, gateway_cluster: str
) -> str:
    env = environment(templates_dir)
    try:
        template = env.get_template(plan.template)
        return template.render(
            plan=plan,
            udf_name=UDF_NAME,
            gateway_cluster=gateway_cluster,
            template_name=plan.template,
            route_tag=ROUTE_TAG,
            route_local=ROUTE_LOCAL,
            route_central=ROUTE_CENTRAL,
        )
    except jinja2.TemplateSyntaxError as exc:
        raise TickScriptError(
            exc.message or "template syntax error", exc.lineno, 1, f"tickscripts/{plan.template}"
        ) from None
    except (jinja2.UndefinedError, ValueError) as exc:
        raise TickScriptError(
            f"rendering {plan.task_id}: {exc}", 1, 1, f"tickscripts/{plan.template}"
        ) from None


def render_plan(
    plan: AggregationPlan, templates_dir: Path, *, gateway_cluster: str = "federation_gateway"
) -> RenderedTask:
    """Render one plan with its template and lint the result.

    Raises TickScriptError naming the template when rendering fails, and RenderLintError with
    every problem when the rendered script does not lint clean: nothing unsafe is ever returned.
    """
    script = _render(plan, templates_dir, gateway_cluster)
    problems = lint(script, lint_context(plan), file=f"{plan.aggregation}.{plan.dc}.tick")
    if problems:
        raise RenderLintError(problems)
    return RenderedTask(plan, script)


def detection_lint_context(plan: DetectionPlan, gateway_cluster: str) -> LintContext:
    """What the linter must know to check a detection's script: its window, and the gateway
    cluster that only the UDF's counts may reach (its personal keys are read by design)."""
    return LintContext(
        window_ns=plan.window_ns,
        personal_keys=frozenset(),
        value_field=plan.key,
        udf_name=UDF_NAME,
        detection_gateway=gateway_cluster,
    )


def render_detection(
    plan: DetectionPlan, templates_dir: Path, *, gateway_cluster: str = "federation_gateway"
) -> RenderedTask:
    """Render one detection with its template and lint the result, as `render_plan` does; a
    template that would send anything but the UDF's counts to the gateway cluster is refused
    (rule `detection-gateway`)."""
    script = _render(plan, templates_dir, gateway_cluster)
    ctx = detection_lint_context(plan, gateway_cluster)
    problems = lint(script, ctx, file=f"{plan.detection}.{plan.dc}.tick")
    if problems:
        raise RenderLintError(problems)
    return RenderedTask(plan, script)


def render_tracked(
    plan: TrackedPlan, templates_dir: Path, *, gateway_cluster: str = "federation_gateway"
) -> RenderedTask:
    """Render and lint the task of a plan of either kind (`render_plan`, `render_detection`)."""
    if isinstance(plan, DetectionPlan):
        return render_detection(plan, templates_dir, gateway_cluster=gateway_cluster)
    return render_plan(plan, templates_dir, gateway_cluster=gateway_cluster)


_HEADER_PREFIX = "// federation plan "
SEPARATOR_PREFIX = "// ---- "
"""How `federation render` introduces each task when it prints several to one stream."""


@dataclass(frozen=True)
class ScriptPart:
    """One script of a stream `federation render` printed, padded with blank lines so that
    its line numbers are those of the whole stream."""

    name: str
    source: str


def split_rendered(source: str) -> list[ScriptPart]:
    """The scripts of a stream as `federation render` prints it (each introduced by a
    `// ---- <file>  (task <id>)` line); a stream without such lines is one script."""
    lines = source.split("\n")
    starts = [i for i, line in enumerate(lines) if line.startswith(SEPARATOR_PREFIX)]
    if not starts or any(line.strip() for line in lines[: starts[0]]):
        return [ScriptPart("", source)]
    parts = []
    for index, start in enumerate(starts):
        end = starts[index + 1] if index + 1 < len(starts) else len(lines)
        words = lines[start][len(SEPARATOR_PREFIX) :].split()
        name = words[0] if words else ""
        padded = [""] * start + lines[start:end]
        parts.append(ScriptPart(name, "\n".join(padded)))
    return parts


def _header(source: str) -> str:
    """The plan header comment: the first line of a rendered script, or the first of the
    leading comment lines that is one (render's own separator line comes before it)."""
    for line in source.split("\n"):
        stripped = line.strip()
        if stripped.startswith(_HEADER_PREFIX):
            return stripped
        if stripped and not stripped.startswith("//"):
            break
    return ""


def context_for_script(
    config: FederationConfig, source: str, file: str
) -> tuple[LintContext | None, str]:
    """Find the aggregation and DC a script was rendered for: from its plan comment
    (`// federation plan <aggregation> dc=<dc> version=...`, among the comment lines it starts
    with), else from a file named `<aggregation>.<dc>.tick`. Returns the context (None if
    neither names a known plan) and a note saying how it was found."""
    first = _header(source)
    aggregation = dc = None
    if first.startswith(_HEADER_PREFIX):
        parts = first[len(_HEADER_PREFIX) :].split()
        if parts:
            aggregation = parts[0]
            for part in parts[1:]:
                if part.startswith("dc="):
                    dc = part[3:]
    if aggregation is None or dc is None:
        stem = Path(file).name.removesuffix(".tick")
        if stem.count(".") == 1:
            aggregation, dc = stem.split(".")
    if aggregation in config.aggregations and dc in config.fleet.dcs:
        plan = resolve_plan(config, aggregation, dc)
        return lint_context(plan), f"checked against plan {plan.task_id} (version {plan.version})"
    if aggregation in config.detections and dc in config.fleet.dcs:
        detection = resolve_detection(config, aggregation, dc)
        ctx = detection_lint_context(detection, config.fleet.central.gateway_cluster)
        return ctx, f"checked against detection {detection.task_id} (version {detection.version})"
    return None, "no plan found for this script: only the context-free rules ran"


def lint_script(config: FederationConfig, source: str, file: str) -> tuple[list[LintProblem], str]:
    """Lint a script against the plan it names (`context_for_script`), and a note saying how
    it was checked. A script that names no plan (hand-written, or renamed) is checked against
    the personal-data keys of every region, since it may be deployed to any DC; the rules that
    need its aggregation's window and value field do not run."""
    ctx, note = context_for_script(config, source, file)
    if ctx is not None:
        return lint(source, ctx, file=file), note
    keys = frozenset().union(
        *(
            m.personal_keys
            for policy in config.policies.values()
            for m in policy.measurements.values()
        )
    )
    return lint(source, file=file, personal_keys=keys), (
        "no plan found for this script: checked against every region's personal-data keys, "
        "without the window rules"
    )


@dataclass(frozen=True)
class LintedScript:
    """The lint of one script of a file: where, what was found, and which plan it was held to."""

    label: str
    problems: list[LintProblem]
    note: str


def lint_file(config: FederationConfig, source: str, file: str) -> list[LintedScript]:
    """Lint a file as written by hand or as `federation render` prints it (several scripts,
    each after its separator line): each script against the plan its header or file name
    names (or, naming none, against every region's personal-data keys: `lint_script`).
    Problems carry the file's own line numbers."""
    parts = split_rendered(source)
    linted = []
    for part in parts:
        problems, note = lint_script(config, part.source, file)
        label = file if len(parts) == 1 else f"{file} ({part.name})"
        linted.append(LintedScript(label, problems, note))
    return linted


def render_all(
    config: FederationConfig, *, dc: str | None = None, aggregation: str | None = None
) -> list[RenderedTask]:
    """Render every (aggregation or detection, DC) task of the config, optionally only one DC
    or one aggregation or detection."""
    names = {*config.aggregations, *config.detections}
    if aggregation is not None and aggregation not in names:
        known = ", ".join(sorted(names))
        raise TickScriptError(
            f"no aggregation or detection named {aggregation!r} (known: {known})",
            1,
            1,
            "tickscripts",
        )
    plans = [
        p
        for p in resolve_tracked(config, dc)
        if aggregation is None or p.aggregation == aggregation
    ]
    gateway = config.fleet.central.gateway_cluster
    return [render_tracked(p, config.templates_dir, gateway_cluster=gateway) for p in plans]


def write_rendered(tasks: list[RenderedTask], out_dir: Path) -> list[Path]:
    """Write each task's script and JSON spec into `out_dir`; return the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for task in tasks:
        script_path = out_dir / task.filename
        spec_path = out_dir / task.filename.replace(".tick", ".json")
        script_path.write_text(task.script, encoding="utf-8")
        spec_path.write_text(task.spec_json(), encoding="utf-8")
        written += [script_path, spec_path]
    return written
