"""Scenario 18: a query a real kapacitord 1.5.7 cannot run, its DC's raw data kept.

dub1 runs in Kapacitor mode on live data (two-second windows, a look-back of three; see
`test_kapacitor`). Its influxd is SIGKILLed for longer than the look-back, then started again on
its own data directory: every batch query of dub1's tasks fails meanwhile. Kapacitor keeps the
tasks `executing` with an empty `error`; only the query nodes' `errors` counters grow, and its own
text ("error executing query: … connection refused") is only in its log, which the agent follows.
While it lasts, `federation status` (asking the coordinator) and `federation rollout status`
(through the coordinator) must name dub1 and give Kapacitor's own words. dub1's events that
arrive meanwhile wait at the source (a mail server's queue) and are written once influxd is back.
Once it is, the windows no scheduled run computed are found missing and replayed, and every
window ends verified or empty, with central equal to the embedded executor on the raw data.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable

import pytest
import yaml

from federation.agent.kapacitor_replay import REPLAY_SUFFIX
from federation.kapacitor.client import KapacitorClient

from .checks import Outcome, check_invariants
from .harness import SECOND, LiveRun, ScenarioFederation, sleep_until, wait_for
from .test_kapacitor import LOOKBACK
from .test_kapacitor import kfed as kapacitor_federation
from .test_kapacitor_gateway_down import RowWatch, assert_missed_were_replayed, schedule_ships

kfed = kapacitor_federation
"""Scenario 13's federation: dub1 on a real kapacitord (not started yet)."""

pytestmark = [pytest.mark.slow, pytest.mark.kapacitor]

OPERATOR_ENV = "FEDERATION_SCENARIO_OPERATOR_TOKEN"

KAPACITORS_WORDS = ("error executing query", "connection refused")
"""What Kapacitor 1.5.7 logs when the DC's influxd does not answer its batch query."""


def operator_config(fed: ScenarioFederation) -> str:
    """A copy of the scenario's config whose fleet names an operator token, so that `rollout`
    goes through the coordinator (a reader's request: the coordinator needs no operator token
    for it)."""
    target = fed.root / "operator-config"
    if not target.exists():
        shutil.copytree(fed.config_dir, target)
        fleet = yaml.safe_load((target / "fleet.yaml").read_text())
        fleet["central"]["operator_token_env"] = OPERATOR_ENV
        (target / "fleet.yaml").write_text(yaml.safe_dump(fleet, sort_keys=False))
        os.environ.setdefault(OPERATOR_ENV, "unused-by-readers")
    return str(target)


def cli_lines(fed: ScenarioFederation, *args: str, config: str | None = None) -> list[str]:
    """The lines `federation ARGS` printed that speak of dub1 and give Kapacitor's words."""
    result = subprocess.run(
        [sys.executable, "-m", "federation.cli", *args, "--config", config or str(fed.config_dir)],
        capture_output=True, text=True, env=os.environ.copy(), cwd=fed.root, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, (args, result.stderr)
    return [
        " ".join(line.replace("│", " ").split())  # a table's row, as words
        for line in result.stdout.splitlines()
        if "dub1" in line and all(words in line for words in KAPACITORS_WORDS)
    ]


def no_replay_running(client: KapacitorClient) -> bool:
    """No replay's temporary task exists in this Kapacitor (the agent creates it before the
    replay and deletes it once the replay ended).

    A live batch replay sends the batches of its queries while the next query runs; when one
    fails, Kapacitor 1.5.7 closes the task's input while an earlier batch is still being sent,
    and kapacitord dies (`panic: send on closed channel`, `replay.go` `replayBatchFromChan`).
    Killing influxd under a replay would test that crash, not the failing scheduled queries.
    """
    return not client.list_tasks(pattern=f"*{REPLAY_SUFFIX}")


def test_18_a_query_kapacitor_cannot_run_is_shown_then_backfilled(
    kfed: ScenarioFederation, record: Callable[[Outcome], None]
) -> None:
    w = kfed.window_ns
    run = LiveRun.begin(kfed, history_windows=3, traffic_windows=28)
    kfed.start_agent("dub1")
    kfed.start_agent("lon1")
    tasks = [f"fed-{a}-dub1" for a in kfed.config.aggregations]
    with KapacitorClient(kfed.kapacitors["dub1"].url) as client:
        schedule_ships(kfed, client, tasks, run.began_ns)
    watch = RowWatch(kfed, "dub1")
    assert kfed.clock.now_ns() + (LOOKBACK + 8) * w < run.end_ns, "the tasks started too late"

    # dub1's events wait at the source while its influxd is down (the feeder stops writing
    # them; a write in flight ends first), and arrive once it is back.
    influxd = kfed.stack.servers["dub1"]
    feeding = run.feeder.traffic
    run.feeder.traffic = [t for t in feeding if t.dc != "dub1"]
    time.sleep(0.5)
    # Not while the agent's catch-up replays: kapacitord 1.5.7 itself exits when a replay's
    # query fails while an earlier one's batches wait (see `no_replay_running`).
    with KapacitorClient(kfed.kapacitors["dub1"].url) as client:
        wait_for(lambda: no_replay_running(client), 6 * w / SECOND, "dub1's replays to end")
    influxd.kill()
    down_from = kfed.clock.now_ns()

    # The agent reports Kapacitor's own error to the coordinator; both commands show it.
    seen: dict[str, list[str]] = {}

    def shown() -> bool:
        if "status" not in seen:
            lines = cli_lines(kfed, "status", "--via", "api", "--dc", "dub1")
            seen.update({"status": lines} if lines else {})
        if "rollout status" not in seen:
            lines = cli_lines(kfed, "rollout", "status", config=operator_config(kfed))
            seen.update({"rollout status": lines} if lines else {})
        return len(seen) == 2

    wait_for(shown, 12 * w / SECOND, "status and rollout status to show Kapacitor's error")
    for command, lines in seen.items():
        print(f"federation {command}, influxd down: {lines}")
    assert any(line.startswith("unhealthy on dub1: ") for line in seen["status"]), seen
    # Longer than the look-back: some windows are computed by no scheduled run at all.
    sleep_until(kfed.clock, down_from + (LOOKBACK + 4) * w)
    with KapacitorClient(kfed.kapacitors["dub1"].url) as client:
        health = {t: client.task_health(t) for t in tasks}
    # Kapacitor 1.5.7 says nothing on the task: only the query nodes' counters grew.
    assert all(h.executing and h.error == "" for h in health.values()), health
    assert all(h.nodes["query1"].errors > 0 for h in health.values()), health
    influxd.start()  # same port, same data directory: the raw data is all there
    run.feeder.traffic = feeding
    down_to = kfed.clock.now_ns()
    assert down_to + 4 * w < run.end_ns, "the outage outlasted the traffic"
    run.end_traffic(LOOKBACK + 2)  # a few scheduled runs with influxd back
    run.finish(timeout_s=90)
    watch.close()

    # No scheduled run of these windows could read them: they went missing, and were replayed.
    assert_missed_were_replayed(kfed, watch, down_from, down_to)
    record(check_invariants(kfed, run.start_ns, run.until_ns))
