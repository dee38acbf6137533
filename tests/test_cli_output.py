"""What the CLI prints stays usable in a pipe: no table is cut to 80 columns."""

from __future__ import annotations

import os
import subprocess
import sys

PRINT_WIDE_TABLE = """
from federation.cli._common import OutputFormat, print_rows
columns = [f"column_{i}" for i in range(8)]
print_rows([{c: c.upper() + "-" + "x" * 20 for c in columns}], columns, OutputFormat.table)
"""


def test_a_table_printed_into_a_pipe_keeps_every_cell_whole() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.run(
        [sys.executable, "-c", PRINT_WIDE_TABLE], capture_output=True, text=True, env=env,
        timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "…" not in proc.stdout
    for i in range(8):
        assert f"column_{i}" in proc.stdout and f"COLUMN_{i}-{'x' * 20}" in proc.stdout
    widest = max(len(line) for line in proc.stdout.splitlines())
    assert 8 * 28 < widest < 400  # its natural width: neither cut nor padded


def test_a_bad_option_value_is_one_line_and_exit_2() -> None:
    for args, expected in (
        (["demo", "--events-per-hour", "x"], "error: Invalid value for '--events-per-hour': "),
        (["report", "worst", "-a", "delivery_latency", "--top", "abc"],
         "error: Invalid value for '--top': "),
    ):  # fmt: skip
        proc = subprocess.run(
            [sys.executable, "-m", "federation.cli", *args], capture_output=True, text=True,
            timeout=60,
        )  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(expected), proc.stderr
