"""Scenario 9: hostile configuration.

A template that selects a personal-data field, a policy that exports a personal-data dimension,
an aggregation that groups by a personal field, a hand-written TICKscript whose selector would
copy raw personal fields: each is refused where it is first seen (`validate`, `render`, `lint`)
with exit code 2 (invalid config or template) or 1 (lint problems) and a message naming the
file and key path or line:column. Nothing is deployed anywhere: `rollout apply` fails before
any Kapacitor is asked to change anything, and `policy apply --direct` changes nothing at the
DC's InfluxDB.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from federation.cli import main
from federation.config import load_config
from federation.devstack.kapacitor_emulator import KapacitorEmulator
from federation.devstack.localstack import InfluxServer
from federation.errors import ConfigProblems
from federation.influx import InfluxClient
from federation.tickscript.render import RenderLintError, render_all

pytestmark = pytest.mark.slow

KAPACITOR_DCS = ("dub1", "lon1")
WRITES = frozenset({"POST", "PATCH", "DELETE", "PUT"})


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def line_of(path: Path, needle: str) -> int:
    """The 1-based line of `path` where `needle` first occurs."""
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in {path}")


class Cli:
    """Runs `federation …` in-process through the real entry point (exit codes included)."""

    def __init__(self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
        self.capsys = capsys
        self.monkeypatch = monkeypatch

    def __call__(self, *args: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        self.monkeypatch.setattr(sys, "argv", ["federation", *args])
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        captured = self.capsys.readouterr()
        return code, captured.out, captured.err


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    return Cli(capsys, monkeypatch)


@pytest.fixture
def emulators(config_dir: Path) -> Iterator[dict[str, KapacitorEmulator]]:
    """Served Kapacitor emulators for dub1 and lon1, which fleet.yaml now points at."""
    fleet_path = config_dir / "fleet.yaml"
    served = {dc: KapacitorEmulator() for dc in KAPACITOR_DCS}
    with served["dub1"].serve() as dub1_url, served["lon1"].serve() as lon1_url:
        data = yaml.safe_load(fleet_path.read_text())
        data["dcs"]["dub1"]["kapacitor"] = {"url": dub1_url}
        data["dcs"]["lon1"]["kapacitor"] = {"url": lon1_url}
        fleet_path.write_text(yaml.safe_dump(data, sort_keys=False))
        yield served


def assert_nothing_deployed(emulators: dict[str, KapacitorEmulator]) -> None:
    for dc, emulator in emulators.items():
        assert emulator.requests == [], (dc, emulator.requests)
        assert emulator.tasks == {}, dc


def assert_rollout_refused(
    cli: Cli, config_dir: Path, emulators: dict[str, KapacitorEmulator], tmp_path: Path
) -> str:
    state = tmp_path / "rollout-state.json"
    code, out, err = cli(
        "rollout", "apply", "-c", str(config_dir), "--canary", "dub1", "--state", str(state)
    )
    assert code == 2, (code, out, err)
    assert "deployed" not in out
    assert_nothing_deployed(emulators)
    assert not state.exists()
    return err


# --- a template that selects a personal-data field ------------------------------------------

_QUERY = "|query({{ plan.query | tick_query }})"


def test_a_template_selecting_a_personal_field_is_refused_at_render_and_rollout(
    config_dir: Path, emulators: dict[str, KapacitorEmulator], cli: Cli, tmp_path: Path
) -> None:
    template = config_dir / "tickscripts/aggregation.tick.j2"
    edit(
        template,
        _QUERY,
        "|query({{ plan.query | replace('SELECT ', 'SELECT \"sender\", ', 1) | tick_query }})",
    )
    # The config itself is fine: the template is what is unsafe.
    code, _, err = cli("validate", "-c", str(config_dir))
    assert code == 0, err

    with pytest.raises(RenderLintError) as info:
        render_all(load_config(config_dir), dc="dub1")
    problem = next(p for p in info.value.problems if p.rule == "pii-key")
    assert "'sender'" in problem.message

    out_dir = tmp_path / "rendered"
    code, out, err = cli("render", "-c", str(config_dir), "--out", str(out_dir))
    assert code == 2, (code, out, err)
    # e.g. delivery_direction.dub1.tick:9:24: pii-key: personal-data key 'sender' is selected
    assert re.search(r"\w+\.\w+\.tick:\d+:\d+: pii-key: personal-data key 'sender'", err), err
    assert not out_dir.exists() or not list(out_dir.iterdir())

    err = assert_rollout_refused(cli, config_dir, emulators, tmp_path)
    assert "pii-key" in err and "'sender'" in err


def test_a_template_unsafe_for_one_dc_only_changes_no_dc_not_even_the_canary(
    config_dir: Path, emulators: dict[str, KapacitorEmulator], cli: Cli, tmp_path: Path
) -> None:
    edit(
        config_dir / "tickscripts/aggregation.tick.j2",
        _QUERY,
        "{% if plan.dc == 'lon1' %}"
        "|query({{ plan.query | replace('SELECT ', 'SELECT \"client_ip\", ', 1) | tick_query }})"
        "{% else %}" + _QUERY + "{% endif %}",
    )
    render_all(load_config(config_dir), dc="dub1")  # the canary alone would render clean
    err = assert_rollout_refused(cli, config_dir, emulators, tmp_path)
    assert ".lon1.tick:" in err and "'client_ip'" in err


# --- config that exports or groups by personal data -----------------------------------------


def _export_client_ip(config_dir: Path) -> tuple[str, str, int]:
    path = config_dir / "policies/eu.yaml"
    edit(
        path,
        "exportable_dimensions: [direction, mailer, customer]",
        "exportable_dimensions: [direction, mailer, customer, client_ip]",
    )
    line = line_of(path, "exportable_dimensions")
    return "policies/eu.yaml", "measurements.delivery.exportable_dimensions.3", line


def _group_by_recipient(config_dir: Path) -> tuple[str, str, int]:
    path = config_dir / "tickscripts/delivery_latency.yaml"
    edit(path, "dimensions: [direction, mailer, customer]", "dimensions: [direction, recipient]")
    return "tickscripts/delivery_latency.yaml", "dimensions.1", line_of(path, "dimensions:")


CONFIG_CASES = {
    "policy-exports-client_ip": (_export_client_ip, "client_ip"),
    "aggregation-groups-by-recipient": (_group_by_recipient, "recipient"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_config_exporting_personal_data_is_refused_everywhere(
    config_dir: Path,
    emulators: dict[str, KapacitorEmulator],
    cli: Cli,
    tmp_path: Path,
    influxd: InfluxServer,
    case: str,
) -> None:
    break_config, key = CONFIG_CASES[case]
    # dub1's InfluxDB is a real influxd, so a policy apply that went ahead would show there.
    fleet_path = config_dir / "fleet.yaml"
    data = yaml.safe_load(fleet_path.read_text())
    data["dcs"]["dub1"]["influxdb"] = {"url": influxd.url}
    fleet_path.write_text(yaml.safe_dump(data, sort_keys=False))
    file, key_path, line = break_config(config_dir)
    where = f"{file}:{line}: {key_path}: "

    with pytest.raises(ConfigProblems) as info:
        load_config(config_dir)
    assert any(str(p).startswith(where) and repr(key) in str(p) for p in info.value.problems), (
        where,
        str(info.value),
    )

    rendered = tmp_path / "rendered"
    script = tmp_path / "delivery_latency.dub1.tick"
    script.write_text("// nothing to see\n")
    commands = {
        "validate": ["validate", "-c", str(config_dir)],
        "render": ["render", "-c", str(config_dir), "--out", str(rendered)],
        "lint": ["lint", "-c", str(config_dir), str(script)],
        "policy plan": ["policy", "plan", "-c", str(config_dir), "--dc", "dub1", "--direct"],
    }
    for name, args in commands.items():
        code, out, err = cli(*args)
        assert code == 2, (name, code, out, err)
        assert where in err, (name, where, err)
    assert not rendered.exists()

    with InfluxClient(influxd.url) as influx:
        before = _influx_state(influx)
        code, out, err = cli("policy", "apply", "-c", str(config_dir), "--dc", "dub1", "--direct")
        assert code == 2, (code, out, err)
        assert where in err
        assert _influx_state(influx) == before

    assert_rollout_refused(cli, config_dir, emulators, tmp_path)


def _influx_state(influx: InfluxClient) -> list[object]:
    state: list[object] = []
    for database in sorted(influx.databases()):
        state.append(
            (database, sorted(vars(rp).items() for rp in influx.retention_policies(database)))
        )
    return state


def test_the_installed_entry_point_exits_2_naming_file_and_key_path(config_dir: Path) -> None:
    file, key_path, line = _export_client_ip(config_dir)
    result = subprocess.run(
        [sys.executable, "-m", "federation.cli", "validate", "--config", str(config_dir)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{file}:{line}: {key_path}: " in result.stderr
    assert "Traceback" not in result.stderr


# --- a hand-written TICKscript handed to `federation lint` ----------------------------------

_SELECTOR_SCRIPT = """\
// federation plan delivery_latency dc=dub1 version=000000000000
dbrp "mail"."raw_30d"

batch
    |query('''SELECT "latency_ms", {extra} FROM "mail"."raw_30d"."delivery"''')
        .period(1h)
        .every(1h)
        .align()
    |percentile('latency_ms', 95.0)
    |influxDBOut()
        .cluster('federation_gateway')
        .database('federation')
        .retentionPolicy('agg_400d')
        .measurement('delivery_latency_p95')
"""


@pytest.mark.parametrize(
    "extra,rules",
    [
        ('"sender", "direction"::tag', {"pii-selector", "pii-key"}),
        ('"size"', {"pii-selector"}),
        ("*", {"pii-selector"}),
    ],
    ids=["personal-field", "other-field", "wildcard"],
)
def test_lint_refuses_a_selector_over_raw_points_with_extra_fields(
    config_dir: Path, cli: Cli, tmp_path: Path, extra: str, rules: set[str]
) -> None:
    script = tmp_path / "p95.tick"
    script.write_text(_SELECTOR_SCRIPT.replace("{extra}", extra))
    code, out, err = cli("lint", "-c", str(config_dir), str(script))
    assert code == 1, (code, out, err)
    found = re.findall(rf"^{re.escape(str(script))}:(\d+):(\d+): ([a-z-]+): ", err, re.M)
    assert {rule for _, _, rule in found} >= rules, err
    selector_line = line_of(script, "|percentile(")
    assert (str(selector_line), "pii-selector") in {(ln, rule) for ln, _, rule in found}, err
    if "pii-key" in rules:
        query_line = line_of(script, "|query(")
        assert any(ln == str(query_line) and rule == "pii-key" for ln, _, rule in found), err
    assert "checked against plan fed-delivery_latency-dub1" in out
