"""The coordinator's web pages, rendered on the server from the Jinja templates beside this
module (`templates/`), with no script, style sheet or font fetched from anywhere:

    GET  /                                       status grid per aggregation and detection (every
                                                 state drawn; a detection's findings counted)
    GET  /windows/{aggregation}/{dc}/{start}     one window: state, reason, run, events, …
    GET  /dcs/{dc}                               one DC: agent, versions, retention, backfills
    GET  /reports                                percentiles per period: SVG chart and table
    GET  /reports.csv                            the same table as CSV
    GET  /login, POST /login, GET /logout        the reader token, kept in a cookie

Every page needs the reader token: as a bearer header, from the cookie set by the login form,
or once as `?token=` in a URL (the token is then put in the cookie and the page redirected to
the URL without it, so it leaves the address bar and the history). Without it a page redirects
to the login form. The grid, window and DC pages refresh themselves (`?refresh=SECONDS`, 0 for
never; default 30).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from federation.coordinator.backfills import RunningBackfill
from federation.coordinator.convergence import dc_overview
from federation.coordinator.ledger import BackfillRow, TrackingRow, WindowRow
from federation.coordinator.planner import QUEUED
from federation.coordinator.service import Coordinator
from federation.coordinator.status import StatusReport, state_reason, status_report
from federation.core.clock import TimeInputError, format_rfc3339, parse_instant, parse_rfc3339
from federation.core.durations import SECOND_NS, format_duration
from federation.errors import FederationError, InvalidInput
from federation.reporting._central import CentralReader
from federation.reporting.chart import line_chart
from federation.reporting.export import rows_csv
from federation.reporting.reports import percentile_report
from federation.reporting.results import PercentileReport

__all__ = ["COOKIE", "STATE_COLOURS", "web_routes"]

COOKIE = "federation_reader"
"""The cookie holding the reader token in a browser (HttpOnly, SameSite=Strict)."""

STATE_COLOURS: dict[str, str] = {
    "verified": "#2e7d32",
    "empty": "#a5d6a7",
    "shipped": "#1e88e5",
    "expected": "#e0e0e0",
    "backfilling": "#fbc02d",
    "missing": "#d32f2f",
    "inconsistent": "#8e24aa",
    "unrecoverable": "#424242",
    "-": "#ffffff",
}
"""The colour of each window state in the grid ('-': not tracked yet)."""

Handler = Callable[[Request], Awaitable[Response]]

DEFAULT_REFRESH_S = 30
REPORT_DAYS = 14
"""The reports page's default range: the last two weeks, per day."""
DEFAULT_PERCENTILES = "50,95,99"
"""What the reports page plots unless asked for others (any percentile merges exactly)."""

_TEMPLATES = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(["html", "j2"]),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_TEMPLATES.filters["rfc3339"] = lambda ns: "" if ns is None else format_rfc3339(int(ns))
_TEMPLATES.globals["zip"] = zip
_TEMPLATES.filters["ago"] = lambda ns: format_duration(max(int(ns), 0) // SECOND_NS * SECOND_NS)


def _page(name: str, status: int = 200, **context: Any) -> HTMLResponse:
    context.setdefault("refresh", 0)
    html = _TEMPLATES.get_template(name).render(colours=STATE_COLOURS, **context)
    return HTMLResponse(html, status_code=status)


@dataclass(frozen=True)
class _Web:
    coordinator: Coordinator
    central: CentralReader

    # -- the reader token -----------------------------------------------------------------------

    def _token_ok(self, token: str | None) -> bool:
        return bool(token) and self.coordinator.tokens.check_reader(str(token))

    def _guard(self, request: Request) -> Response | None:
        """None when the request may see the page; else the redirect that gets it there."""
        query = request.query_params
        if "token" in query:
            rest = urlencode([(k, v) for k, v in query.multi_items() if k != "token"])
            target = request.url.path + (f"?{rest}" if rest else "")
            if not self._token_ok(query["token"]):
                return _page("login.html.j2", 401, next=target, error="that token was refused")
            response = RedirectResponse(target, status_code=303)
            _set_cookie(request, response, query["token"])
            return response
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        token = value.strip() if scheme.lower() == "bearer" else request.cookies.get(COOKIE)
        if self._token_ok(token):
            return None
        target = str(request.url.path) + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse("/login?" + urlencode({"next": target}), status_code=303)

    def guarded(self, page: Handler) -> Handler:
        """`page` behind the reader token (see `_guard`)."""

        async def endpoint(request: Request) -> Response:
            denied = self._guard(request)
            return denied if denied is not None else await page(request)

        return endpoint

    async def login_form(self, request: Request) -> Response:
        return _page("login.html.j2", next=_safe_next(request.query_params.get("next")), error="")

    async def login(self, request: Request) -> Response:
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        token = (form.get("token") or [""])[0].strip()
        target = _safe_next((form.get("next") or ["/"])[0])
        if not self._token_ok(token):
            return _page("login.html.j2", 401, next=target, error="that token was refused")
        response = RedirectResponse(target, status_code=303)
        _set_cookie(request, response, token)
        return response

    async def logout(self, request: Request) -> Response:
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    # -- pages ----------------------------------------------------------------------------------

    async def grid(self, request: Request) -> Response:
        c = self.coordinator
        q = request.query_params
        try:
            since = parse_instant(q["since"], c.clock) if q.get("since") else None
            report: StatusReport = await run_in_threadpool(
                lambda: status_report(
                    c.ledger, c.config, c.clock.now_ns(),
                    aggregation=q.get("aggregation") or None, since_ns=since,
                    dc=q.get("dc") or None, max_skew_ns=c.settings.max_clock_skew_ns,
                )
            )  # fmt: skip
        except (FederationError, TimeInputError) as exc:
            return _page("error.html.j2", 400, title="status", error=str(exc))
        return _page("grid.html.j2", report=report, refresh=_refresh(request))

    async def window(self, request: Request) -> Response:
        p = request.path_params
        try:
            start = parse_rfc3339(p["start"])
            detail = await run_in_threadpool(
                window_detail, self.coordinator, p["aggregation"], p["dc"], start
            )
        except (FederationError, TimeInputError, ValueError) as exc:
            return _page("error.html.j2", 404, title="window", error=str(exc))
        return _page("window.html.j2", w=detail, refresh=_refresh(request))

    async def dc(self, request: Request) -> Response:
        name = request.path_params["dc"]
        c = self.coordinator
        try:
            overview = await run_in_threadpool(
                dc_overview, c.ledger, c.config, c.clock.now_ns(), [name]
            )
            backfills = await run_in_threadpool(dc_backfills, c, name)
        except FederationError as exc:
            return _page("error.html.j2", 404, title=name, error=str(exc))
        return _page(
            "dc.html.j2", d=overview["dcs"][0], now_ns=overview["now_ns"], backfills=backfills,
            refresh=_refresh(request),
        )  # fmt: skip

    async def reports(self, request: Request) -> Response:
        form = self._report_form(request)
        try:
            report = await run_in_threadpool(self._report, form)
        except FederationError as exc:
            return _page("reports.html.j2", 400, form=form, error=str(exc), report=None,
                         aggregations=sorted(self.coordinator.config.aggregations))  # fmt: skip
        fields = report.fields
        labels = [s.period.label for s in report.periods]
        chart = line_chart(
            labels,
            {f: _per_period(report, f) for f in fields},
            unit=self.coordinator.config.aggregations[report.aggregation].source.unit,
            title=f"{report.aggregation}: {', '.join(fields)} per {report.kind} ({report.tz})",
        )
        return _page(
            "reports.html.j2", form=form, error="", report=report, chart=chart,
            columns=report.columns(), rows=report.table_rows(),
            csv_query=urlencode(form), aggregations=sorted(self.coordinator.config.aggregations),
        )  # fmt: skip

    async def reports_csv(self, request: Request) -> Response:
        form = self._report_form(request)
        try:
            report = await run_in_threadpool(self._report, form)
        except FederationError as exc:
            return Response(f"error: {exc}\n", status_code=400, media_type="text/plain")
        name = f"{form['aggregation']}-{form['period']}-{form['from']}-{form['to']}.csv"
        return Response(
            rows_csv(report.table_rows(), report.columns()),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    def _report_form(self, request: Request) -> dict[str, str]:
        q = request.query_params
        config = self.coordinator.config
        today = datetime.fromtimestamp(self.coordinator.clock.now_ns() / 1e9, UTC).date()
        first = sorted(config.aggregations)[0] if config.aggregations else ""
        return {
            "aggregation": q.get("aggregation") or first,
            "period": q.get("period") or "day",
            "from": q.get("from") or (today - timedelta(days=REPORT_DAYS - 1)).isoformat(),
            "to": q.get("to") or today.isoformat(),
            "tz": q.get("tz") or "UTC",
            "dcs": q.get("dcs") or "",
            "percentiles": q.get("percentiles") or DEFAULT_PERCENTILES,
        }

    def _report(self, form: dict[str, str]) -> PercentileReport:
        c = self.coordinator
        try:
            ps = [float(p) for p in form["percentiles"].split(",") if p.strip()]
        except ValueError:
            raise InvalidInput(
                f"percentiles {form['percentiles']!r}: write numbers like 50,95,99"
            ) from None
        return percentile_report(
            c.config, self.central, form["aggregation"], period=form["period"],
            from_date=form["from"], to_date=form["to"], tz=form["tz"],
            dcs=[d.strip() for d in form["dcs"].split(",") if d.strip()], percentiles=ps or None,
            ledger=c.ledger.engine,
        )  # fmt: skip


def _per_period(report: PercentileReport, field: str) -> list[float | None]:
    """Each period's value of `field`: of its version with the most events (None: no data)."""
    best: dict[str, tuple[int, float | None]] = {}
    for row in report.rows:
        if row.count and row.count > best.get(row.period, (0, None))[0]:
            best[row.period] = (row.count, row.values.get(field))
    return [best.get(s.period.label, (0, None))[1] for s in report.periods]


def _refresh(request: Request) -> int:
    text = request.query_params.get("refresh", str(DEFAULT_REFRESH_S))
    return max(0, int(text)) if text.isdigit() else DEFAULT_REFRESH_S


def _safe_next(target: str | None) -> str:
    """A redirect target on this site only (a path), never another origin."""
    if not target or not target.startswith("/") or target.startswith("//"):
        return "/"
    return target


def _set_cookie(request: Request, response: Response, token: str) -> None:
    response.set_cookie(
        COOKIE, token, httponly=True, samesite="strict", path="/",
        secure=request.url.scheme == "https",
    )  # fmt: skip


def window_detail(
    coordinator: Coordinator, aggregation: str, dc: str, start_ns: int
) -> dict[str, Any]:
    """Everything the ledger holds about one window, with what its state means; a window
    without a row is `expected` before its deadline, `missing` after (or not tracked)."""
    config = coordinator.config
    config.dc(dc)
    detection = config.detections.get(aggregation)
    spec = detection or config.aggregations.get(aggregation)
    if spec is None:
        raise FederationError(f"unknown aggregation or detection {aggregation!r}")
    if start_ns % spec.window:
        raise FederationError(f"{format_rfc3339(start_ns)} is not the start of a window")
    now = coordinator.clock.now_ns()
    with coordinator.ledger.session() as session:
        row = session.execute(
            select(WindowRow).where(
                WindowRow.dc == dc,
                WindowRow.aggregation == aggregation,
                WindowRow.start_ns == start_ns,
            )
        ).scalar_one_or_none()
        tracked = session.execute(
            select(TrackingRow.start_ns).where(
                TrackingRow.dc == dc, TrackingRow.aggregation == aggregation
            )
        ).scalar_one_or_none()
        detail: dict[str, Any] = {
            "aggregation": aggregation, "dc": dc, "start_ns": start_ns,
            "end_ns": start_ns + spec.window,
            "deadline_ns": start_ns + spec.window + spec.lookback + spec.grace_ns,
            "row": row is not None, "detection": detection is not None,
        }  # fmt: skip
        if row is not None:
            detail.update(
                state=row.state, reason=state_reason(row.state, row.reason), run=row.run,
                events=row.events, groups=row.groups, suppressed_events=row.suppressed_events,
                summary_count=row.summary_count, version=row.version, shipped_ns=row.shipped_ns,
                verified_ns=row.verified_ns, updated_ns=row.updated_ns,
                backfill_id=row.backfill_id, findings=row.findings,
            )  # fmt: skip
            return detail
    if tracked is None or start_ns < tracked:
        state = "-"
        reason = "not tracked: before the coordinator began tracking this DC's windows"
    else:
        state = "missing" if now >= detail["deadline_ns"] else "expected"
        reason = state_reason(state, None)
    detail.update(state=state, reason=reason)
    return detail


def dc_backfills(coordinator: Coordinator, dc: str) -> dict[str, list[Any]]:
    """A DC's backfills that are queued, and those leased to its agent without a result."""
    from federation.coordinator.backfills import running_backfills

    with coordinator.ledger.session() as session:
        queued = session.scalars(
            select(BackfillRow)
            .where(BackfillRow.dc == dc, BackfillRow.state == QUEUED)
            .order_by(BackfillRow.id)
        ).all()
        running: list[RunningBackfill] = running_backfills(session, dc)
        return {
            "queued": [
                {
                    "id": b.id,
                    "aggregation": b.aggregation,
                    "start_ns": b.start_ns,
                    "end_ns": b.end_ns,
                    "attempts": b.attempts,
                    "origin": b.origin,
                }
                for b in queued
            ],
            "running": list(running),
        }


def web_routes(coordinator: Coordinator, central: CentralReader) -> list[Route]:
    """The web pages' routes, reading the coordinator's ledger and central (for reports)."""
    web = _Web(coordinator, central)
    return [
        Route("/", web.guarded(web.grid), methods=["GET"]),
        Route("/login", web.login_form, methods=["GET"]),
        Route("/login", web.login, methods=["POST"]),
        Route("/logout", web.logout, methods=["GET"]),
        Route("/windows/{aggregation}/{dc}/{start}", web.guarded(web.window), methods=["GET"]),
        Route("/dcs/{dc}", web.guarded(web.dc), methods=["GET"]),
        Route("/reports", web.guarded(web.reports), methods=["GET"]),
        Route("/reports.csv", web.guarded(web.reports_csv), methods=["GET"]),
    ]
