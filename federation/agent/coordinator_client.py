"""The agent's client for the coordinator's Agent API (bearer token = the DC's agent token).

    GET  /api/v1/dcs/{dc}/desired                 the plans and retention this DC should run
    POST /api/v1/dcs/{dc}/report                  what runs, and its health
    GET  /api/v1/dcs/{dc}/backfills               backfill requests leased to this DC
    POST /api/v1/backfills/{id}/result            how a backfill went
    GET  /api/v1/dcs/{dc}/windows?aggregation=&since=   what central holds, for catch-up
    POST /api/v1/dcs/{dc}/windows/raw-counts      raw event counts against what central holds

Every failure is a `CoordinatorError` naming the URL and the status; an answer that does not
have the documented shape is one too. Plans (aggregations and detections alike) are rebuilt
with `tracked_plan_from_dict`, which refuses a plan whose version does not match its content.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from federation.clients.coordinator_http import CoordinatorHttp
from federation.core.detection_plan import TrackedPlan, tracked_plan_from_dict
from federation.errors import CoordinatorError, InvalidInput
from federation.policy import RetentionSpec


@dataclass(frozen=True)
class DesiredRetentionState:
    """The raw retention policies the DC's database should have."""

    database: str
    policies: tuple[RetentionSpec, ...]
    allow_shrink: bool = False

    def policy(self, name: str) -> RetentionSpec | None:
        """The policy called `name`, else the default one, else None."""
        for spec in self.policies:
            if spec.name == name:
                return spec
        return next((spec for spec in self.policies if spec.default), None)


@dataclass(frozen=True)
class DesiredState:
    """What the coordinator wants one DC to run."""

    dc: str
    region: str
    plans: tuple[TrackedPlan, ...]
    retention: DesiredRetentionState
    gateway_database: str
    gateway_retention_policy: str


@dataclass(frozen=True)
class BackfillRequest:
    """A range `[start_ns, end_ns)` of one aggregation version the DC is asked to recompute."""

    id: str
    aggregation: str
    version: str
    start_ns: int
    end_ns: int


@dataclass(frozen=True)
class CentralWindow:
    """One window as the coordinator's ledger knows it."""

    start_ns: int
    state: str
    run: int | None
    events: int | None


@dataclass(frozen=True)
class WindowsView:
    """What central holds of one (DC, aggregation)."""

    windows: tuple[CentralWindow, ...]
    latest_shipped_ns: int | None


@dataclass(frozen=True)
class HeldCount:
    """One window's raw event count against what central holds (`events` None: nothing
    shipped); `short` when the coordinator marked it `inconsistent` for holding less."""

    aggregation: str
    start_ns: int
    raw_events: int
    state: str
    events: int | None
    short: bool


class CoordinatorClient(CoordinatorHttp):
    """A client for one coordinator's Agent API, as one DC."""

    def desired(self, dc: str) -> DesiredState:
        """The DC's desired state; CoordinatorError if unreachable, refused or malformed.

        Every plan must be for `dc` and carry the version its content hashes to.
        """
        path = f"/api/v1/dcs/{quote(dc, safe='')}/desired"
        data = self._object("GET", path)
        try:
            plans = []
            for entry in data["plans"]:
                plan = tracked_plan_from_dict(entry["plan"])
                if plan.dc != dc or plan.aggregation != entry["aggregation"]:
                    raise InvalidInput(
                        f"plan {plan.task_id} is not {entry['aggregation']} for {dc}"
                    )
                if entry["version"] != plan.version:
                    raise InvalidInput(
                        f"plan {plan.task_id}: version {entry['version']} does not match "
                        f"its content ({plan.version})"
                    )
                plans.append(plan)
            retention = data["retention"]
            return DesiredState(
                dc=str(data["dc"]),
                region=str(data["region"]),
                plans=tuple(plans),
                retention=DesiredRetentionState(
                    database=str(retention["database"]),
                    policies=tuple(RetentionSpec.from_dict(p) for p in retention["policies"]),
                    allow_shrink=bool(retention.get("allow_shrink", False)),
                ),
                gateway_database=str(data["gateway"]["database"]),
                gateway_retention_policy=str(data["gateway"]["retention_policy"]),
            )
        except (KeyError, TypeError, ValueError, InvalidInput) as exc:
            raise CoordinatorError(self.url + path, f"malformed desired state: {exc}") from None

    def report(self, dc: str, body: Mapping[str, Any]) -> None:
        """Report what runs on the DC (mode, plans and their health, retention, agent version)."""
        self._request("POST", f"/api/v1/dcs/{quote(dc, safe='')}/report", body=body)

    def backfills(self, dc: str) -> list[BackfillRequest]:
        """The backfill requests leased to the DC, oldest first as the coordinator lists them."""
        path = f"/api/v1/dcs/{quote(dc, safe='')}/backfills"
        data = self._object("GET", path)
        try:
            return [
                BackfillRequest(
                    id=str(item["id"]),
                    aggregation=str(item["aggregation"]),
                    version=str(item["version"]),
                    start_ns=int(item["start_ns"]),
                    end_ns=int(item["end_ns"]),
                )
                for item in data["backfills"]
            ]
        except (KeyError, TypeError, ValueError) as exc:
            raise CoordinatorError(self.url + path, f"malformed backfill list: {exc}") from None

    def backfill_result(
        self, backfill_id: str, *, status: str, windows: int, error: str = ""
    ) -> None:
        """Report how a backfill went: `status` is "done" or "failed"."""
        if status not in ("done", "failed"):
            raise ValueError(f"backfill status must be done or failed, not {status!r}")
        self._request(
            "POST",
            f"/api/v1/backfills/{quote(backfill_id, safe='')}/result",
            body={"status": status, "windows": windows, "error": error},
        )

    def windows(self, dc: str, aggregation: str, since_ns: int | None = None) -> WindowsView:
        """The windows central holds for (dc, aggregation), from `since_ns` on."""
        path = f"/api/v1/dcs/{quote(dc, safe='')}/windows"
        params = {"aggregation": aggregation}
        if since_ns is not None:
            params["since"] = str(since_ns)
        data = self._object("GET", path, params=params)
        try:
            latest = data.get("latest_shipped_ns")
            return WindowsView(
                windows=tuple(
                    CentralWindow(
                        start_ns=int(w["start_ns"]),
                        state=str(w["state"]),
                        run=None if w.get("run") is None else int(w["run"]),
                        events=None if w.get("events") is None else int(w["events"]),
                    )
                    for w in data["windows"]
                ),
                latest_shipped_ns=None if latest is None else int(latest),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CoordinatorError(self.url + path, f"malformed window list: {exc}") from None

    def raw_counts(self, dc: str, aggregation: str, counts: Mapping[int, int]) -> list[HeldCount]:
        """Send the DC's raw event count of each window; the coordinator answers what central
        holds of each, and marks the windows it holds less of `inconsistent` (re-run)."""
        path = f"/api/v1/dcs/{quote(dc, safe='')}/windows/raw-counts"
        body = {
            "aggregation": aggregation,
            "counts": [{"start_ns": s, "events": n} for s, n in sorted(counts.items())],
        }
        data = self._object("POST", path, body=body)
        try:
            return [
                HeldCount(
                    aggregation=aggregation,
                    start_ns=int(w["start_ns"]),
                    raw_events=int(w["raw_events"]),
                    state=str(w["state"]),
                    events=None if w.get("events") is None else int(w["events"]),
                    short=bool(w["short"]),
                )
                for w in data["windows"]
            ]
        except (KeyError, TypeError, ValueError) as exc:
            raise CoordinatorError(self.url + path, f"malformed raw count answer: {exc}") from None
