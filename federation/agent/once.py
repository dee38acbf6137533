"""`agent once`: run the embedded executor over a range of one DC's windows, then exit."""

from __future__ import annotations

from collections.abc import Callable

from federation.agent.daemon import build_shipper, local_influx
from federation.agent.executor import RangeResult, WindowResult
from federation.agent.window_runner import WindowRunner
from federation.config import FederationConfig
from federation.config.resolve import resolve_tracked
from federation.core.clock import Clock, SystemClock
from federation.core.windows import windows_between
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
    every aggregation and detection of DC `dc` (or only the one named `aggregation`), resolved
    from the local config. A detection's findings are kept in the DC's own InfluxDB and only
    its counts are shipped, as the agent does.

    Plans come from the config directory, not from the coordinator. Windows that have not
    ended by `clock` are left out, as the agent leaves them out (`window_choice`): a range
    reaching into the future covers only what has ended. Returns one RangeResult per plan,
    aggregations first; a failure of one plan does not stop the next.
    """
    if end_ns <= start_ns:
        raise InvalidInput("the range is empty: its end must be later than its start")
    names = {*config.aggregations, *config.detections}
    if aggregation is not None and aggregation not in names:
        known = ", ".join(sorted(names))
        raise InvalidInput(f"no aggregation or detection named {aggregation!r} (known: {known})")
    plans = [p for p in resolve_tracked(config, dc) if aggregation in (None, p.aggregation)]
    clock = clock or SystemClock()
    end_ns = min(end_ns, clock.now_ns())
    results = []
    with (
        local_influx(config, dc) as source,
        build_shipper(config, dc, gateway_url=gateway_url) as shipper,
    ):
        runner = WindowRunner(source, shipper, clock)
        for plan in plans:
            callback = None if on_window is None else _bind(on_window, plan.aggregation)
            windows = windows_between(start_ns, end_ns, plan.window_ns)
            results.append(runner.run_windows(plan, windows, on_window=callback))
    return results


def _bind(
    on_window: Callable[[str, WindowResult], None], aggregation: str
) -> Callable[[WindowResult], None]:
    def callback(result: WindowResult) -> None:
        on_window(aggregation, result)

    return callback
