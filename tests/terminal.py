"""Start a `federation` command as a shell at a terminal would, so Ctrl-C (SIGINT) reaches it.

A process inherits an ignored or blocked SIGINT across exec, and Python leaves an ignored
SIGINT ignored: a command started by a non-interactive shell's `&` (as a CI job or a script
may start the test run) never sees Ctrl-C. A test that sends SIGINT to a command it spawned
asserts what the command does at a terminal, so it spawns it with SIGINT's default disposition,
unblocked, whatever the test run inherited.
"""

from __future__ import annotations

import signal


def sigint_as_at_a_terminal() -> None:
    """`preexec_fn` for `subprocess.Popen`: SIGINT back to its default disposition, unblocked."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
