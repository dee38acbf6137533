"""A smaller `federation demo` end to end: the outcome a newcomer is promised."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from federation.coordinator.status import StatusReport
from federation.devstack.demo import DemoOptions, run_demo
from federation.devstack.traffic import COMPROMISED_SENDER, SPAM_RANGE

REPO = Path(__file__).resolve().parent.parent


class RecordingView:
    def __init__(self) -> None:
        self.steps: list[str] = []
        self.notes: list[str] = []
        self.grids: list[tuple[str, StatusReport]] = []
        self.tables: dict[str, list[dict[str, Any]]] = {}

    def step(self, message: str) -> None:
        self.steps.append(message)

    def note(self, message: str) -> None:
        self.notes.append(message)

    def status(self, title: str, report: StatusReport) -> None:
        self.grids.append((title, report))

    def table(self, title: str, columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
        self.tables[title] = list(rows)


@pytest.mark.slow
def test_small_demo_ends_verified_clean_and_without_personal_data() -> None:
    view = RecordingView()
    options = DemoOptions(dcs=2, hours=6, events_per_hour=1500, outage_s=1.0, config_source=REPO)
    outcome, fed = run_demo(options, view)
    windows_expected = 6 * (2 + 3) * 2  # hours x (aggregations + detections) x DCs
    assert outcome.all_done, outcome.windows
    assert sum(outcome.windows.values()) == windows_expected
    assert outcome.audit is not None and outcome.audit.ok, outcome.audit.violations
    assert outcome.scan is not None and outcome.scan.clean, outcome.scan.findings
    assert outcome.scan.values_checked > 0 and outcome.scan.measurements >= 3
    # The outage left windows to backfill: the grid taken during it shows them open.
    during = dict(view.grids)["windows during the outage"]
    open_states = {
        state
        for agg in during.aggregations
        for dc in agg.dcs
        for state, n in dc.counts.items()
        if n and state not in ("verified", "empty")
    }
    assert open_states & {"missing", "backfilling", "expected"}
    assert outcome.late_events > 0
    daily = next(rows for title, rows in view.tables.items() if title.startswith("daily latency"))
    assert {row["dc"] for row in daily} == {"dub1", "lon1"}
    assert sum(int(row["events"]) for row in daily) > 0
    # The compromised account in dub1 and the spam wave in lon1 are found, each in its own DC,
    # and central holds as many findings, as numbers only.
    assert outcome.incidents_found
    assert ("recipients_per_sender", COMPROMISED_SENDER) in outcome.local_findings["dub1"]
    spam = {k for d, k in outcome.local_findings["lon1"] if d == "senders_per_client_ip"}
    assert spam and all(k.startswith(SPAM_RANGE + ".") for k in spam)
    assert outcome.central_findings == {dc: len(f) for dc, f in outcome.local_findings.items()}
    local = [t for t in view.tables if t.startswith("LOCAL TO dub1")]
    assert local and COMPROMISED_SENDER in str(view.tables[local[0]])
    central = view.tables["central: detection counts per DC (no key, no value of one)"]
    assert COMPROMISED_SENDER not in str(central) and SPAM_RANGE not in str(central)
    assert not fed.root.exists(), "the demo removes its temporary directory"


def _processes_under(root: Path) -> list[str]:
    """Command lines of the running processes that name a path under `root`."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = next(
                line for line in (proc / "status").read_text().splitlines() if line[:6] == "State:"
            )
        except (OSError, StopIteration):
            continue
        if str(root) in cmdline and "zombie" not in state:
            found.append(f"{proc.name}: {cmdline}")
    return found


def _demo_process(tmp: Path, *extra: str) -> subprocess.Popen[str]:
    # TMPDIR puts the demo's directory, and so every server's command line, under `tmp`.
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDERATION_DEMO_")}
    env.update(TMPDIR=str(tmp), PYTHONUNBUFFERED="1")
    env.pop("FEDERATION_KAPACITORD", None)
    return subprocess.Popen(
        [
            sys.executable, "-m", "federation.cli", "demo", "--config", str(REPO), "--dcs", "1",
            "--hours", "6", "--events-per-hour", "60", *extra,
        ],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip


def _wait_for_line(process: subprocess.Popen[str], prefix: str, lines: list[str]) -> str:
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line)
        if line.strip().startswith(prefix):
            return line.strip()
    raise AssertionError("the demo ended before printing " + repr(prefix) + ":\n" + "".join(lines))


def _assert_nothing_left(tmp: Path) -> None:
    deadline = time.monotonic() + 20
    while (left := _processes_under(tmp)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, left


@pytest.mark.slow
def test_demo_keep_writes_an_env_file_and_sigterm_stops_every_process(tmp_path: Path) -> None:
    process = _demo_process(tmp_path, "--keep")
    lines: list[str] = []
    try:
        source = _wait_for_line(process, "source ", lines)
        env_file = Path(source.removeprefix("source "))
        exported = dict(
            line.removeprefix("export ").split("=", 1) for line in env_file.read_text().splitlines()
        )
        assert exported["FEDERATION_CONFIG"] == str(env_file.parent / "config")
        assert {
            "FEDERATION_DEMO_DUB1_TOKEN",
            "FEDERATION_DEMO_READER_TOKEN",
            "FEDERATION_DEMO_OPERATOR_TOKEN",
        } <= set(exported)
        assert env_file.stat().st_mode & 0o077 == 0
        # With it, a README command reads the live federation through its coordinator.
        status = subprocess.run(
            ["bash", "-c", f"source {env_file} && {sys.executable} -m federation.cli status --via api"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert status.returncode == 0, status.stderr
        assert "dub1" in status.stdout
        assert _processes_under(tmp_path), "the demo's servers run while it is kept"
        process.send_signal(signal.SIGTERM)
        process.wait(60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 128 + signal.SIGTERM
    _assert_nothing_left(tmp_path)


@pytest.mark.slow
def test_a_demo_killed_outright_leaves_no_process(tmp_path: Path) -> None:
    process = _demo_process(tmp_path)
    lines: list[str] = []
    try:
        _wait_for_line(process, "2.", lines)  # its influxd servers are up
        assert _processes_under(tmp_path)
        process.kill()
        process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
    _assert_nothing_left(tmp_path)


def test_demo_refuses_bad_numbers_in_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "federation.cli", "demo", "--events-per-hour", "-5"],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --events-per-hour -5: must be at least 1"
