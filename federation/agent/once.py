"""`agent once`: run the embedded executor over a range of one DC's windows, then exit."""

from __future__ import annotations

from collections.abc import Callable

from federation.agent.daemon import build_shipper, local_influx
from federation.agent.executor import RangeResult, RunIds, WindowResult, run_range
from federation.config import FederationConfig
from federation.config.resolve import resolve_all, resolve_plan
from federation.core.clock import Clock, SystemClock
from federation.errors import InvalidInput


def run_once(
    config: FederationConfig,
    dc: str,
    start_ns: int,
    end_ns: int,
    *,
    aggregation: str | None = None,
    gateway_url: str | None = None,
    clock: Clock | None = None,
    on_window: Callable[[str, WindowResult], None] | None = None,
) -> list[RangeResult]:
    """Compute and ship, through the gateway, every whole window in `[start_ns, end_ns)` of
    every aggregation of DC `dc` (or only `aggregation`), resolved from the local config.

    Plans come from the config directory, not from the coordinator. Windows that have not
    ended by `clock` are left out, as the agent leaves them out (`window_choice`): a range
    reaching into the future covers only what has ended. Returns one RangeResult per
    aggregation; a failure of one aggregation does not stop the next.
    """
    if end_ns <= start_ns:
        raise InvalidInput("the range is empty: its end must be later than its start")
    if aggregation is not None and aggregation not in config.aggregations:
        known = ", ".join(sorted(config.aggregations))
        raise InvalidInput(f"no aggregation named {aggregation!r} (known: {known})")
    plans = (
        [resolve_plan(config, aggregation, dc)]
        if aggregation is not None
        else resolve_all(config, dc)
    )
    clock = clock or SystemClock()
    run_ids = RunIds(clock)
    results = []
    with (
        local_influx(config, dc) as source,
        build_shipper(config, dc, gateway_url=gateway_url) as shipper,
    ):
        for plan in plans:
            callback = None if on_window is None else _bind(on_window, plan.aggregation)
            results.append(
                run_range(
                    plan,
                    start_ns,
                    min(end_ns, clock.now_ns()),
                    source=source,
                    sink=shipper,
                    clock=clock,
                    run_ids=run_ids,
                    on_window=callback,
                )
            )
    return results


def _bind(
    on_window: Callable[[str, WindowResult], None], aggregation: str
) -> Callable[[WindowResult], None]:
    def callback(result: WindowResult) -> None:
        on_window(aggregation, result)

    return callback
