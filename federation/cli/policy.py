"""`federation policy plan|apply|audit` and `federation erase`: retention and personal data."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from federation.cli._common import (
    ConfigOption,
    FormatOption,
    OutputFormat,
    add_group,
    duration_option,
    err,
    out,
    print_rows,
    seconds_bounds,
)
from federation.cli._coordinated import (
    ProgressPrinter,
    names,
    print_reload,
    reload_rows,
    through_coordinator,
)
from federation.clients.operator import operator_client
from federation.core.durations import format_duration
from federation.errors import FederationError

if TYPE_CHECKING:
    from federation.config import FederationConfig
    from federation.policy import AuditReport, PlanRow

DcOption = Annotated[
    str | None,
    typer.Option("--dc", help="Only this DC ('central' for the central database)."),
]
DirectOption = Annotated[
    bool,
    typer.Option(
        "--direct",
        help="Apply the library functions straight to the InfluxDB endpoints in fleet.yaml "
        "instead of through the coordinator. The default while fleet.yaml names no "
        "central.operator_token_env.",
    ),
]
TimeoutOption = Annotated[
    float,
    typer.Option(
        "--timeout",
        help="Seconds to wait for each InfluxDB request (0.1 to 3600).",
        callback=seconds_bounds("--timeout", 0.1, 3600),
    ),
]
WaitOption = Annotated[
    float,
    typer.Option(
        "--wait-timeout",
        help="Through the coordinator: seconds to wait for every agent to converge (0 to 86400).",
        callback=seconds_bounds("--wait-timeout", 0, 86400),
    ),
]


class CommandFailed(FederationError):
    """The command ran and printed its result, which includes a failure (exit code 1)."""


_PLAN_COLUMNS = ("target", "url", "database", "status", "effect", "statement", "destructive")


def _outcome_header(target: str, url: str, database: str) -> str:
    return f"{target}  {url}  database {database}"


def _print_outcomes(
    plan_rows: Sequence[PlanRow], fmt: OutputFormat, *, applied: bool, title: str
) -> None:
    if fmt is not OutputFormat.table:
        print_rows([row.as_dict() for row in plan_rows], _PLAN_COLUMNS, fmt, title)
        return
    current = None
    for row in plan_rows:
        if row.target != current:
            current = row.target
            out.print(_outcome_header(row.target, row.url, row.database), markup=False)
        if row.status == "failed":
            out.print(f"  FAILED: {row.effect}", markup=False)
        elif row.status == "up to date":
            out.print("  up to date, nothing changed" if applied else "  up to date", markup=False)
        else:
            mark = "!" if row.destructive else ("~" if row.statement.startswith("ALTER") else "+")
            status = f"{row.status}: " if applied else ""
            drift = " [drift]" if row.drift else ""
            out.print(f"  {mark} {status}{row.statement}  -- {row.effect}{drift}", markup=False)


def plan(
    config: ConfigOption = Path("."),
    dc: DcOption = None,
    direct: DirectOption = False,
    fmt: FormatOption = OutputFormat.table,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Show, per DC and central, the retention statements apply would run; changes nothing.

    Each statement is marked with its effect: + create, ~ alter, ! destructive (a shrinking
    retention deletes data, and apply refuses it without --allow-shrink). Exit 1 when a target
    could not be reached. Through the coordinator (unless --direct): what reloading its config
    directory would change per DC, retention and plan versions, and each DC whose agent reports
    retention drift (a refused shrink) or a failure; nothing is applied.
    """
    from federation.config import load_config
    from federation.policy import outcome_rows, plan_retention

    fed = load_config(config)
    if through_coordinator(fed, direct):
        _plan_through_coordinator(fed, dc, fmt)
        return
    outcomes = plan_retention(fed, dc, timeout=timeout)
    rows = outcome_rows(outcomes, applied=False)
    _print_outcomes(rows, fmt, applied=False, title="retention plan")
    failed = [o.target for o in outcomes if o.error is not None]
    if fmt is OutputFormat.table:
        changes = [r for r in rows if r.status == "planned"]
        destructive = sum(1 for r in changes if r.destructive)
        summary = f"plan: {len(changes)} change(s) on {len({r.target for r in changes})} of "
        summary += f"{len(outcomes)} target(s)"
        if destructive:
            summary += f"; {destructive} destructive (apply refuses without --allow-shrink)"
        if failed:
            summary += f"; unreachable: {', '.join(failed)}"
        out.print(summary, markup=False)
    if failed:
        raise CommandFailed(f"plan: unreachable: {', '.join(failed)}")


def apply(
    config: ConfigOption = Path("."),
    dc: DcOption = None,
    allow_shrink: Annotated[
        bool,
        typer.Option("--allow-shrink", help="Also shrink retentions (deletes older data)."),
    ] = False,
    direct: DirectOption = False,
    fmt: FormatOption = OutputFormat.table,
    timeout: TimeoutOption = 10.0,
    wait_timeout: WaitOption = 900.0,
) -> None:
    """Apply the retention policies to every DC (and, with --direct, central); idempotent.

    Through the coordinator (unless --direct): the coordinator reloads its config directory
    (refusing, with every problem, a config that does not validate), then each DC's agent
    applies its retention at its next reconcile (a shrink only with --allow-shrink); the
    command prints a line whenever a DC's state changes and exits 1 when a DC reports drift or
    a failure, or has not converged within --wait-timeout. With --direct: the coordinator the
    agents pull from is made to desire the same retention first (it reloads, or the command
    refuses, changing nothing, when its config declares another), so no agent undoes the
    change; a target that fails is reported and the others still converge; exit 1 when any
    target failed or a shrink was refused.
    """
    from federation.config import load_config
    from federation.policy import apply_retention, outcome_rows
    from federation.policy.retention_sync import sync_coordinator_retention

    fed = load_config(config)
    if through_coordinator(fed, direct):
        _apply_through_coordinator(fed, dc, fmt, wait_timeout, allow_shrink=allow_shrink)
        return
    dcs = [name for name in ([dc] if dc else sorted(fed.fleet.dcs)) if name in fed.fleet.dcs]
    if dcs:
        sync = sync_coordinator_retention(fed, dcs, allow_shrink=allow_shrink, timeout=timeout)
        if sync.state == "unchecked":
            err.print(f"note: coordinator {sync.url} not checked: {sync.detail}", markup=False)
        elif fmt is OutputFormat.table:
            out.print(f"coordinator {sync.url}: {sync.state}: {sync.detail}", markup=False)
    outcomes = apply_retention(fed, dc, allow_shrink=allow_shrink, timeout=timeout)
    rows = outcome_rows(outcomes, applied=True)
    _print_outcomes(rows, fmt, applied=True, title="retention apply")
    failed = [o.target for o in outcomes if o.error is not None]
    refused = [o.target for o in outcomes if o.result is not None and o.result.refused]
    if fmt is OutputFormat.table:
        changed = [o.target for o in outcomes if o.result is not None and o.result.changed]
        if not changed and not failed and not refused:
            out.print(
                f"apply: nothing changed; all {len(outcomes)} target(s) already match the policies",
                markup=False,
            )
        else:
            converged = sum(1 for o in outcomes if o.ok)
            summary = f"apply: {converged} of {len(outcomes)} target(s) converged"
            if failed:
                summary += f"; failed: {', '.join(failed)}"
            if refused:
                summary += f"; shrink refused on {', '.join(refused)} (rerun with --allow-shrink)"
            out.print(summary, markup=False)
    if failed or refused:
        problems = [f"failed: {', '.join(failed)}"] if failed else []
        problems += [f"shrink refused on {', '.join(refused)}"] if refused else []
        raise CommandFailed("apply: " + "; ".join(problems))


def _plan_through_coordinator(config: FederationConfig, dc: str | None, fmt: OutputFormat) -> None:
    with operator_client(config) as client:
        reload = client.reload(dry_run=True)
        overview = client.dcs([dc] if dc else None)
    rows = reload_rows(reload, dcs=[dc] if dc else None)
    # What the agents report now: a shrink refused as drift stays to do although no file changes.
    changing = {row["dc"] for row in rows if row["what"] == "retention"}
    for entry in overview:
        retention = entry.get("retention") or {}
        state = retention.get("state")
        if state in ("drift", "failed") and entry["dc"] not in changing:
            rows.append(
                {"dc": entry["dc"], "what": "retention", "subject": "raw",
                 "change": f"{state}: {retention.get('detail') or 'not converged'}",
                 "detail": "apply with --allow-shrink" if state == "drift" else "see the agent"}
            )  # fmt: skip
    print_reload(rows, fmt, "policy plan (coordinator, dry run)")
    if fmt is OutputFormat.table and any(r["what"] == "plan" for r in rows):
        out.print("plan versions change only through `federation rollout apply`", markup=False)


def _apply_through_coordinator(
    config: FederationConfig,
    dc: str | None,
    fmt: OutputFormat,
    wait_timeout: float,
    *,
    allow_shrink: bool,
) -> None:
    from federation.clients.operator import apply_policies

    table = fmt is OutputFormat.table

    def on_reload(reload: dict[str, Any]) -> None:
        rows = reload_rows(reload, dcs=[dc] if dc else None)
        print_reload(rows, fmt, "policy apply (coordinator reloaded)")
        if table:
            out.print("waiting for the agents to apply their retention", markup=False)

    with operator_client(config) as client:
        scope = [dc] if dc else None
        result = apply_policies(
            client,
            dcs=scope,
            allow_shrink=(scope or sorted(config.fleet.dcs)) if allow_shrink else None,
            timeout_s=wait_timeout,
            on_reload=on_reload,
            on_progress=ProgressPrinter(enabled=table),
        )
    watch = result.watch
    converged = [d for d, (state, _) in watch.states.items() if state == "converged"]
    if table:
        summary = f"apply: {len(converged)} of {len(watch.states)} DC(s) converged"
        if watch.failed:
            summary += f"; failed: {names(watch.failed)}"
        if watch.timed_out:
            summary += f"; not converged after {wait_timeout:g}s: {names(watch.timed_out)}"
        out.print(summary, markup=False)
    if not result.ok:
        problems = [f"{d}: {watch.states[d][1] or watch.states[d][0]}" for d in watch.failed]
        problems += [f"{d}: timed out ({watch.states.get(d, ('unknown', ''))[0]})"
                     for d in watch.timed_out]  # fmt: skip
        raise CommandFailed("apply: " + "; ".join(problems))


def audit(
    config: ConfigOption = Path("."),
    fmt: FormatOption = OutputFormat.table,
    check_interval: Annotated[
        str,
        typer.Option(
            "--check-interval",
            help="InfluxDB's [retention] check-interval, part of a raw point's worst-case "
            "lifetime.",
        ),
    ] = "30m",
    tag_sample: Annotated[
        int, typer.Option("--tag-sample", min=1, help="Tag values sampled per central tag key.")
    ] = 1000,
    field_sample: Annotated[
        int,
        typer.Option("--field-sample", min=1, help="Recent values sampled per string field."),
    ] = 100,
    direct: DirectOption = False,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Evidence for an auditor that every DC and central comply with the policies.

    Exit 1 on any violation; each violation is printed on its own line and never quotes a
    personal-data value. --format json carries the whole evidence with the audit time and
    each policy file's sha256; --format csv lists the violations only.
    --direct is the default until a coordinator is configured.
    """
    from federation.config import load_config
    from federation.policy import audit as run_audit

    interval = duration_option("--check-interval", check_interval)
    report = run_audit(
        load_config(config),
        check_interval_ns=interval,
        tag_value_sample=tag_sample,
        field_value_sample=field_sample,
        timeout=timeout,
    )
    if fmt is OutputFormat.json:
        out.print_json(json.dumps(report.as_dict()))
    elif fmt is OutputFormat.csv:
        print_rows(
            [v.as_dict() for v in report.violations],
            ("target", "check", "subject", "message", "remedy"),
            fmt,
        )
    else:
        _print_audit(report)
    if not report.ok:
        raise CommandFailed(f"audit: {len(report.violations)} violation(s)")


def _print_audit(report: AuditReport) -> None:
    hashes = ", ".join(
        f"{region} sha256:{digest[:12]}" for region, digest in sorted(report.policy_hashes.items())
    )
    out.print(
        f"audit at {report.as_dict()['time']} against policies {hashes}; "
        f"check interval {format_duration(report.check_interval_ns)}",
        markup=False,
    )
    retention = [d.retention.as_dict() for d in report.dcs if d.retention is not None]
    retention += [r.as_dict() for r in report.central.retention]
    columns: tuple[str, ...] = ("target", "retention_policy", "declared", "actual")
    columns += ("declared_shard", "actual_shard", "longest_shard_group", "is_default")
    columns += ("worst_case_lifetime",)
    columns += ("max_retention",)
    print_rows(retention, columns, OutputFormat.table, "retention: declared vs actual")
    oldest = [{"dc": d.dc, **p.as_dict()} for d in report.dcs for p in d.oldest]
    if oldest:
        columns = ("dc", "retention_policy", "measurement", "oldest", "age", "limit", "within")
        print_rows(oldest, columns, OutputFormat.table, "oldest raw point per measurement")
    erasures = [e.as_dict() for d in report.dcs for e in d.erasures]
    if erasures:
        columns = ("time", "dc", "subject_hash", "points", "deleted_points", "verified")
        print_rows(erasures, columns, OutputFormat.table, "erasures")
    central = report.central
    out.print(
        f"central {central.url} database {central.database}: {len(central.measurements)} "
        f"measurement(s), {central.tag_values_sampled} tag value(s) and "
        f"{central.field_values_sampled} string field value(s) sampled",
        markup=False,
    )
    for warning in report.warnings:
        out.print(f"warning: {warning}", markup=False)
    for violation in report.violations:
        out.print(violation.line(), markup=False)
    verdict = f"{len(report.violations)} violation(s)" if report.violations else "no violations"
    out.print(f"audit: {verdict}", markup=False)


def erase(
    dc: Annotated[str, typer.Option("--dc", help="The DC whose raw data holds the subject.")],
    subject: Annotated[
        str,
        typer.Option(
            "--subject",
            help="The value to erase (an e-mail address, an IP address); '-' reads it from "
            "the first line of stdin so it stays out of shell history.",
        ),
    ],
    config: ConfigOption = Path("."),
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only count the matching points.")
    ] = False,
    salt_env: Annotated[
        str,
        typer.Option(
            "--salt-env",
            help="The environment variable holding the salt the audit record hashes the "
            "subject with.",
        ),
    ] = "FEDERATION_ERASURE_SALT",
    delete_points: Annotated[
        bool,
        typer.Option(
            "--delete-points",
            help="Delete the points whose tag (one the policy does not declare personal, "
            "e.g. a customer dimension) holds the subject; without it such an erasure is "
            "refused and nothing changes.",
        ),
    ] = False,
    dead_letter: Annotated[
        list[Path] | None,
        typer.Option(
            "--dead-letter",
            help="An ingest dead-letter file to purge of the subject (repeatable; default: "
            "ingest-<dc>.dead.jsonl when it exists here).",
        ),
    ] = None,
    fmt: FormatOption = OutputFormat.table,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Right to erasure: remove a subject from one DC's raw data and ingest's dead letters.

    Looks in every string field and tag of the raw measurements; rewrites every matching field
    with a redaction marker, deletes points whose tag holds the subject (a tag the policy does
    not declare personal only with --delete-points), proves nothing matches any more, and
    records the erasure (a salted hash of the subject, never the subject) in the DC's own
    InfluxDB, where `policy audit` reports it.
    """
    from federation.config import load_config
    from federation.ingest import default_dead_letter
    from federation.policy import erase_subject

    if subject == "-":
        subject = sys.stdin.readline().rstrip("\r\n")
    letters = dead_letter
    if letters is None:
        letters = [default_dead_letter(dc)] if default_dead_letter(dc).is_file() else []
    result = erase_subject(
        load_config(config),
        dc,
        subject,
        salt_env=salt_env,
        dry_run=dry_run,
        delete_points=delete_points,
        dead_letters=letters,
        timeout=timeout,
    )
    if fmt is OutputFormat.json:
        out.print_json(json.dumps(result.as_dict()))
        return
    if fmt is OutputFormat.csv:
        print_rows(
            result.as_dict()["redactions"],
            ("retention_policy", "measurement", "key", "kind", "points"),
            fmt,
        )
        return
    verb = "would redact" if dry_run else "redacted"
    subject = (
        f"subject hmac-sha256 {result.subject_hash}"
        if result.subject_hash
        else f"subject not hashed ({salt_env} unset: a dry run needs no salt)"
    )
    out.print(
        f"erase on {result.dc} (database {result.database}), {subject}: "
        f"{verb} {result.points} point(s)"
        + (f", deleted {result.deleted_points}" if result.deleted_points else ""),
        markup=False,
    )
    for item in result.redactions:
        action = "point(s) deleted" if item.kind == "tag" else "point(s)"
        out.print(
            f"  {item.retention_policy}.{item.measurement} {item.kind} {item.key}: "
            f"{item.points} {action}",
            markup=False,
        )
    for purge in result.dead_letters:
        out.print(f"  dead letters {purge.path}: {purge.records} record(s)", markup=False)
    if not result.dead_letters:
        out.print("  dead letters: no file named (--dead-letter)", markup=False)
    for where in result.blocked:
        out.print(f"  needs --delete-points: {where}", markup=False)
    if dry_run:
        out.print("dry run: nothing written, nothing recorded", markup=False)
    else:
        out.print(
            "verified: no field, tag or dead letter holds the subject any more; "
            "recorded in federation_audit.erasure",
            markup=False,
        )


def register(app: typer.Typer) -> None:
    """Add the `policy` command group and the top-level `erase` command to `app`."""
    add_group(
        app,
        "policy",
        "Retention policies per region: plan, apply, and a compliance audit.",
        {"plan": plan, "apply": apply, "audit": audit},
    )
    app.command("erase")(erase)
