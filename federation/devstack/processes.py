"""The processes of local servers: free ports, spawning, waiting for a ping, stopping.

Every server runs in a process group of its own (so a terminal's Ctrl-C reaches only the
program that started it, which then stops the server and whatever the server started, as one
group), and on Linux dies with the process that started it: when that process is killed
outright (SIGKILL, a crash) the kernel kills its servers too, so none is left behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from federation.errors import FederationError

log = logging.getLogger(__name__)


_PORTS_FROM = 10_000
"""The lowest port `free_port` picks."""
_ports = random.Random()  # this process's own sequence, whatever a test seeds


def ephemeral_ports() -> tuple[int, int]:
    """The range the kernel takes outgoing connections' source ports from (Linux's default
    where it cannot be read)."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return 32768, 60999
    return low, high


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now.

    Picked at random below the kernel's ephemeral range when there is room: a port `bind(0)`
    hands out is one an outgoing connection may take as its source port before the server
    binds it (seen: influxd failing with `bind: address already in use` while the tests ran on
    two workers)."""
    low, _ = ephemeral_ports()
    for _ in range(64 if low - _PORTS_FROM >= 1000 else 0):
        port = _ports.randrange(_PORTS_FROM, low)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_PR_SET_PDEATHSIG = 1
"""prctl(2) option: the signal the kernel sends a process when its parent dies."""


def _die_with_parent() -> Any:
    """A pre-exec hook that makes the child die (SIGKILL) when the process starting it does, or
    None where that cannot be asked for.

    Linux sends that signal when the *thread* that forked the child ends, so it is asked only
    when the main thread spawns: the main thread ends only with the process. A server started
    from another thread is stopped by `stop()`/`close()` alone.
    """
    if not sys.platform.startswith("linux") or threading.current_thread() is not (
        threading.main_thread()
    ):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getpid()

    def hook() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before the request took effect
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


def spawn(argv: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start a server in a session (and process group) of its own that dies with this process,
    its output appended to `log_path`."""
    with log_path.open("ab") as out:
        return subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent(),
        )


def await_ping(
    process: subprocess.Popen[bytes],
    ping_url: str,
    *,
    what: str,
    log_path: Path,
    timeout: float,
    poll_s: float,
) -> bool:
    """Wait until `ping_url` answers 204 (True) or `timeout` seconds pass (False).

    Raises FederationError, naming `what` and its log, when the process exits first.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise FederationError(f"{what} exited with {process.returncode}; see {log_path}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(ping_url, timeout=1.0).status_code == 204:
                return True
        time.sleep(poll_s)
    return False


def signal_group(process: subprocess.Popen[bytes], sig: int) -> None:
    """Send `sig` to the server's process group (the server and what it started, such as
    kapacitord's UDF processes)."""
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)


def terminate(process: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """Stop a running server and its process group: SIGTERM, then SIGKILL after `timeout`
    seconds."""
    if process is None or process.poll() is not None:
        return
    signal_group(process, signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        signal_group(process, signal.SIGKILL)
        process.wait(10)
    # Whatever the server started and left behind goes with it.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
