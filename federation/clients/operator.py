"""A client for the coordinator's operator endpoints, and the waits `policy` and `rollout` do.

    POST /api/v1/desired/reload      {"dry_run", "allow_shrink"}   operator token
    POST /api/v1/rollouts            {"aggregations", "canary", "dcs"}
    POST /api/v1/rollouts/advance    {"aggregations", "dcs"}
    POST /api/v1/rollouts/rollback   {"aggregations", "dcs"}
    GET  /api/v1/dcs?dc=             operator or reader token

Every failure is a `CoordinatorError` naming the URL and the status; a reload the coordinator
refuses for config problems is an `InvalidInput` listing each one. The waits poll
`GET /api/v1/dcs` and call `on_progress(dc, message)` whenever what a DC reports changes, so a
command prints one line per change and nothing while it waits.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from federation.clients.coordinator_http import CoordinatorHttp
from federation.config import FederationConfig
from federation.errors import CoordinatorError, FederationError, InvalidInput

Progress = Callable[[str, str], None]
"""Called with (dc, message) whenever a DC's reported state changes."""

Sleep = Callable[[float], None]


def _no_progress(dc: str, message: str) -> None:
    return None


class OperatorClient(CoordinatorHttp):
    """A client for one coordinator's operator endpoints (bearer token)."""

    def __init__(
        self,
        url: str | Sequence[str],
        token: str,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(url, token, timeout=timeout, transport=transport)

    def reload(
        self, *, dry_run: bool = False, allow_shrink: Sequence[str] | None = None
    ) -> dict[str, Any]:
        """Reload the coordinator's config directory (letting the agents of `allow_shrink`
        shrink their retention to it); the per-DC diff it answers with."""
        body = {"dry_run": dry_run, "allow_shrink": _list(allow_shrink)}
        return self._object("POST", "/api/v1/desired/reload", body=body)

    def dcs(self, dcs: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Every DC (or these) against its desired state, as `GET /api/v1/dcs` answers."""
        return self.dcs_and_rollout(dcs)[0]

    def dcs_and_rollout(
        self, dcs: Sequence[str] | None = None
    ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        """`dcs`, with the last rollout the coordinator records (None: none yet)."""
        data = self._object("GET", "/api/v1/dcs", params=httpx.QueryParams({"dc": list(dcs or ())}))
        found, last = data.get("dcs"), data.get("rollout")
        if not isinstance(found, list):
            raise CoordinatorError(self.url + "/api/v1/dcs", "answer has no list of DCs")
        return found, last if isinstance(last, dict) else None

    def start_rollout(
        self,
        *,
        aggregations: Sequence[str] | None = None,
        canary: str | None = None,
        dcs: Sequence[str] | None = None,
        backfill_retention: bool = False,
    ) -> dict[str, Any]:
        """Make the pending versions desired in the canary (or resume the rollout waiting at
        its canary); what moved and who waits."""
        body = {
            "aggregations": _list(aggregations),
            "canary": canary,
            "dcs": _list(dcs),
            "backfill_retention": backfill_retention,
        }
        return self._object("POST", "/api/v1/rollouts", body=body)

    def advance_rollout(
        self, *, aggregations: Sequence[str] | None = None, dcs: Sequence[str] | None = None
    ) -> dict[str, Any]:
        """Make the pending versions desired in every DC of the scope."""
        body = {"aggregations": _list(aggregations), "dcs": _list(dcs)}
        return self._object("POST", "/api/v1/rollouts/advance", body=body)

    def rollback_rollout(
        self, *, aggregations: Sequence[str] | None = None, dcs: Sequence[str] | None = None
    ) -> dict[str, Any]:
        """Undo the last rollout (in the scope): what was desired before it, desired again."""
        body = {"aggregations": _list(aggregations), "dcs": _list(dcs)}
        return self._object("POST", "/api/v1/rollouts/rollback", body=body)


def _list(names: Sequence[str] | None) -> list[str] | None:
    return list(names) if names else None


def operator_client(
    config: FederationConfig,
    *,
    reader: bool = False,
    environ: Mapping[str, str] | None = None,
    transport: httpx.BaseTransport | None = None,
) -> OperatorClient:
    """A client for the fleet's coordinator with the operator token (or, with `reader`, the
    reader token) from the environment variable fleet.yaml names.

    Raises InvalidInput when fleet.yaml names no operator token, FederationError when the
    variable is not set.
    """
    env = os.environ if environ is None else environ
    central = config.fleet.central
    name = central.reader_token_env if reader else central.operator_token_env
    if name is None:
        raise InvalidInput(
            "fleet.yaml: central.operator_token_env is not set, so the coordinator takes no "
            "operator requests; set it, or use --direct"
        )
    token = env.get(name)
    if not token:
        raise FederationError(f"environment variable {name} (the coordinator token) is not set")
    return OperatorClient(central.coordinator_urls, token, transport=transport)


@dataclass
class WatchResult:
    """How a wait ended: per DC its last state and detail, and which DCs failed or timed out."""

    states: dict[str, tuple[str, str]] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    timed_out: list[str] = field(default_factory=list)
    never_reported: list[str] = field(default_factory=list)
    """The DCs of `timed_out` whose agent has never reported to the coordinator at all."""

    @property
    def ok(self) -> bool:
        return not self.failed and not self.timed_out


def _watch(
    client: OperatorClient,
    dcs: Sequence[str],
    judge: Callable[[dict[str, Any]], tuple[str, str, bool | None]],
    *,
    timeout_s: float,
    poll_s: float,
    on_progress: Progress,
    sleep: Sleep,
) -> WatchResult:
    """Poll until `judge` says every DC is done (True) or failed (False), or time runs out.

    `judge(entry)` returns (state, detail, verdict), verdict None meaning "still waiting".
    """
    result = WatchResult()
    waiting = list(dcs)
    unseen: set[str] = set()
    deadline = time.monotonic() + timeout_s
    while waiting:
        for entry in client.dcs(waiting):
            dc = str(entry.get("dc"))
            if entry.get("last_seen_ns") is None:
                unseen.add(dc)
            else:
                unseen.discard(dc)
            state, detail, verdict = judge(entry)
            if result.states.get(dc) != (state, detail):
                result.states[dc] = (state, detail)
                on_progress(dc, state + (f": {detail}" if detail else ""))
            if verdict is not None and dc in waiting:
                waiting.remove(dc)
                if not verdict:
                    result.failed.append(dc)
        if not waiting or time.monotonic() >= deadline:
            break
        sleep(poll_s)
    result.timed_out = waiting
    result.never_reported = [dc for dc in waiting if dc in unseen]
    return result


def wait_for_retention(
    client: OperatorClient,
    dcs: Sequence[str],
    *,
    timeout_s: float,
    poll_s: float = 1.0,
    on_progress: Progress = _no_progress,
    sleep: Sleep = time.sleep,
    shrink_granted: Sequence[str] = (),
) -> WatchResult:
    """Wait until every DC's agent reports the retention served now as converged.

    A DC reporting drift (a refused shrink) or a failure fails at once, unless it is in
    `shrink_granted`: its last report may predate the grant, so it is waited for. One that has
    not converged by `timeout_s` times out.
    """

    def judge(entry: dict[str, Any]) -> tuple[str, str, bool | None]:
        retention = entry.get("retention") or {}
        state, detail = str(retention.get("state")), str(retention.get("detail") or "")
        verdict = {"converged": True, "drift": False, "failed": False}.get(state)
        if state == "drift" and entry.get("dc") in shrink_granted:
            verdict = None
        return state, detail, verdict

    return _watch(
        client, dcs, judge, timeout_s=timeout_s, poll_s=poll_s, on_progress=on_progress,
        sleep=sleep,
    )  # fmt: skip


def wait_for_versions(
    client: OperatorClient,
    expected: Mapping[tuple[str, str], str | None],
    *,
    timeout_s: float,
    poll_s: float = 1.0,
    verify_window: bool = False,
    on_progress: Progress = _no_progress,
    sleep: Sleep = time.sleep,
) -> WatchResult:
    """Wait until each DC's agent reports the expected version of each aggregation running and
    healthy (None: no longer running at all); with `verify_window`, where the coordinator has
    verified windows of that DC before, also until a window of the new version is verified or
    confirmed empty.

    A DC that reports the expected version unhealthy fails at once.
    """
    by_dc: dict[str, dict[str, str | None]] = {}
    for (dc, aggregation), version in expected.items():
        by_dc.setdefault(dc, {})[aggregation] = version

    def judge(entry: dict[str, Any]) -> tuple[str, str, bool | None]:
        wanted = by_dc.get(str(entry.get("dc")), {})
        reported = {str(a.get("aggregation")): a for a in entry.get("aggregations") or []}
        notes, waiting = [], False
        for aggregation, version in sorted(wanted.items()):
            item = reported.get(aggregation, {})
            running, healthy = item.get("running_version"), item.get("healthy")
            if version is None:
                if running is not None:
                    notes.append(f"{aggregation} still runs {running}, waiting for it to stop")
                    waiting = True
                else:
                    notes.append(f"{aggregation} no longer runs")
                continue
            if running != version:
                notes.append(
                    f"{aggregation} runs {running or 'nothing yet'}, waiting for {version}"
                )
                waiting = True
            elif healthy is False:
                detail = item.get("detail") or "no detail"
                return "failed", f"{aggregation} {version} is unhealthy: {detail}", False
            elif (
                verify_window
                and item.get("last_verified_ns") is not None
                and item.get("verified_since_change_ns") is None
            ):
                notes.append(
                    f"{aggregation} {version} healthy, waiting for a window verified or "
                    "confirmed empty"
                )
                waiting = True
            else:
                notes.append(f"{aggregation} {version} running and healthy")
        return ("waiting" if waiting else "done"), "; ".join(notes), None if waiting else True

    return _watch(
        client, sorted(by_dc), judge, timeout_s=timeout_s, poll_s=poll_s,
        on_progress=on_progress, sleep=sleep,
    )  # fmt: skip


def moved_versions(
    step: Mapping[str, Any], key: str = "moved"
) -> dict[tuple[str, str], str | None]:
    """(dc, aggregation) -> the version a rollout step made desired (None: nothing), from its
    `moved` list (or another list of moves, such as `canary_moves`)."""
    return {
        (str(m["dc"]), str(m["aggregation"])): None if m["to"] is None else str(m["to"])
        for m in step.get(key) or []
    }


def rollout_summary(rollout: Mapping[str, Any]) -> str:
    """One line on the last rollout: what it moved, how far it got, and for one left at its
    canary, the commands that resume or undo it."""
    moves = rollout.get("moves") or []
    dcs = sorted({str(m["dc"]) for m in moves})
    head = f"last rollout #{rollout.get('id')}: {len(moves)} version change(s) in {', '.join(dcs) or 'no DC'}"
    state = rollout.get("state")
    if state == "canary":
        return (
            f"{head}; INTERRUPTED at its canary {rollout.get('canary')}: "
            "`federation rollout apply` resumes it (the other DCs follow once the canary "
            "checks out), `federation rollout rollback` undoes it"
        )
    if state == "rolled_back":
        return f"{head}; rolled back"
    return f"{head}; advanced to every DC of its scope (`federation rollout rollback` undoes it)"


@dataclass
class PolicyApply:
    """`policy apply` through the coordinator: the reload's diff and how the DCs converged."""

    reload: dict[str, Any]
    watch: WatchResult

    @property
    def ok(self) -> bool:
        return self.watch.ok


def apply_policies(
    client: OperatorClient,
    *,
    dcs: Sequence[str] | None = None,
    allow_shrink: Sequence[str] | None = None,
    timeout_s: float = 900.0,
    poll_s: float = 1.0,
    on_reload: Callable[[dict[str, Any]], None] | None = None,
    on_progress: Progress = _no_progress,
    sleep: Sleep = time.sleep,
) -> PolicyApply:
    """Reload the coordinator's config (the agents of `allow_shrink` may shrink their
    retention to it), then wait until the agent of every DC (or of `dcs`) reports the new
    retention converged. InvalidInput (nothing changed) for config problems."""
    reload = client.reload(allow_shrink=allow_shrink)
    if on_reload is not None:
        on_reload(reload)
    fleet = [d["dc"] for d in reload.get("dcs", []) if d.get("desired_retention") is not None]
    for dc in dcs or ():
        if dc not in fleet:
            raise InvalidInput(f"--dc {dc}: not a DC of the reloaded fleet ({', '.join(fleet)})")
    watch = wait_for_retention(
        client, list(dcs) if dcs else fleet, timeout_s=timeout_s, poll_s=poll_s,
        on_progress=on_progress, sleep=sleep, shrink_granted=allow_shrink or (),
    )  # fmt: skip
    return PolicyApply(reload, watch)


@dataclass
class CoordinatedRollout:
    """`rollout apply` through the coordinator, step by step; None for a step not reached."""

    reload: dict[str, Any]
    canary_step: dict[str, Any] | None = None
    canary: WatchResult | None = None
    rolled_back: dict[str, Any] | None = None
    advance_step: dict[str, Any] | None = None
    wave: WatchResult | None = None

    @property
    def ok(self) -> bool:
        return all(w is None or w.ok for w in (self.canary, self.wave)) and not self.rolled_back


def apply_rollout(
    client: OperatorClient,
    *,
    aggregations: Sequence[str] | None = None,
    canary: str | None = None,
    dcs: Sequence[str] | None = None,
    backfill_retention: bool = False,
    timeout_s: float = 900.0,
    window_timeout_s: float = 0.0,
    poll_s: float = 1.0,
    on_step: Callable[[str, dict[str, Any]], None] | None = None,
    on_progress: Progress = _no_progress,
    sleep: Sleep = time.sleep,
) -> CoordinatedRollout:
    """Reload, make the pending versions desired in the canary (or resume the rollout waiting
    at its canary), wait until its agent runs them healthy (and, with `window_timeout_s`, until
    a window of each is verified or confirmed empty where windows are verified at all), then
    advance every other DC of the rollout's scope and wait for them too.

    When the canary fails or times out its previous versions are restored and nothing else
    moves. A failure after the advance is reported, not rolled back (`rollback` does that).
    """
    step = on_step or (lambda _name, _data: None)
    outcome = CoordinatedRollout(client.reload())
    step("reload", outcome.reload)
    outcome.canary_step = client.start_rollout(
        aggregations=aggregations, canary=canary, dcs=dcs, backfill_retention=backfill_retention
    )
    step("canary", outcome.canary_step)
    moved = moved_versions(outcome.canary_step, "canary_moves")
    if not moved:
        return outcome
    # A resumed rollout goes on with the scope it started with.
    recorded = outcome.canary_step.get("scope") or {}
    scope = {"aggregations": recorded.get("aggregations"), "dcs": recorded.get("dcs")}
    outcome.canary = wait_for_versions(
        client, moved, timeout_s=timeout_s, poll_s=poll_s, on_progress=on_progress, sleep=sleep
    )
    if outcome.canary.ok and window_timeout_s > 0:
        outcome.canary = wait_for_versions(
            client, moved, timeout_s=window_timeout_s, poll_s=poll_s, verify_window=True,
            on_progress=on_progress, sleep=sleep,
        )  # fmt: skip
    if not outcome.canary.ok:
        chosen = str(outcome.canary_step["canary"])
        outcome.rolled_back = client.rollback_rollout(
            aggregations=sorted({a for _, a in moved}), dcs=[chosen]
        )
        step("rollback", outcome.rolled_back)
        return outcome
    outcome.advance_step = client.advance_rollout(**scope)
    step("advance", outcome.advance_step)
    rest = moved_versions(outcome.advance_step)
    if rest:
        outcome.wave = wait_for_versions(
            client, rest, timeout_s=timeout_s, poll_s=poll_s, on_progress=on_progress,
            sleep=sleep,
        )  # fmt: skip
    return outcome
