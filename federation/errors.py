"""The project's exception tree.

    FederationError                 root; the CLI prints it as one line and exits 1
    ├── InvalidInput                bad input from a user or a peer; the CLI exits 2
    │   ├── ConfigError             a config file: names the file, key path and line
    │   │   └── ConfigProblems      several ConfigErrors found in one load
    │   ├── LineProtocolError       a line-protocol body: names line and column
    │   ├── TickScriptError         a TICKscript: names file, line and column
    │   ├── SketchDecodeError       a `sketch` field that does not decode
    │   └── CalendarError           a window size that cannot tile a calendar period
    ├── InfluxError                 an InfluxDB request failed: URL, status, body
    ├── KapacitorError              a Kapacitor request failed: URL, status, Kapacitor's message
    ├── CoordinatorError            a coordinator request failed: URL, status, body
    └── PreflightError              the agent or the coordinator cannot start: a dependency
                                    does not answer (one line saying which and why)

Every error names where the problem is, and never carries a personal-data value.
"""

from __future__ import annotations

from collections.abc import Sequence


class FederationError(Exception):
    """Root of every error federation raises on purpose."""

    exit_code = 1


class InvalidInput(FederationError):
    """The input (config, template, HTTP body, line protocol) is wrong; nothing was changed."""

    exit_code = 2


class ConfigError(InvalidInput):
    """One problem in one config file, at one key path (and line, where known)."""

    def __init__(self, file: str, key_path: str, message: str, line: int | None = None) -> None:
        self.file = file
        self.key_path = key_path
        self.message = message
        self.line = line
        where = file if line is None else f"{file}:{line}"
        super().__init__(f"{where}: {key_path}: {message}" if key_path else f"{where}: {message}")


class ConfigProblems(ConfigError):
    """Every problem found while loading a config directory, not just the first."""

    def __init__(self, problems: Sequence[ConfigError]) -> None:
        self.problems = list(problems)
        first = self.problems[0]
        super().__init__(first.file, first.key_path, first.message, first.line)
        self.args = ("\n".join(str(p) for p in self.problems),)

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)


class LineProtocolError(InvalidInput):
    """A line-protocol body that does not parse; `line` and `column` are 1-based."""

    def __init__(self, line: int, column: int, message: str) -> None:
        self.line = line
        self.column = column
        self.message = message
        super().__init__(f"line {line}:{column}: {message}")


class TickScriptError(InvalidInput):
    """A TICKscript problem at `file:line:column` (1-based)."""

    def __init__(self, message: str, line: int, column: int, file: str = "<script>") -> None:
        self.message = message
        self.line = line
        self.column = column
        self.file = file
        super().__init__(f"{file}:{line}:{column}: {message}")


class SketchDecodeError(InvalidInput):
    """A histogram encoding that is malformed, of an unknown version, or of a foreign accuracy."""


class CalendarError(InvalidInput):
    """Windows that cannot tile a calendar period's boundaries in a time zone."""


class RemoteError(FederationError):
    """A request to a remote service failed; carries the URL, the status and the body."""

    service = "remote"

    def __init__(self, url: str, message: str, status: int | None = None, body: str = "") -> None:
        self.url = url
        self.status = status
        self.body = body
        self.message = message
        status_part = f" (HTTP {status})" if status is not None else ""
        super().__init__(f"{self.service} {url}{status_part}: {message}")

    @property
    def refused_token(self) -> bool:
        """The service answered, and refused the credentials sent (HTTP 401 or 403)."""
        return self.status in (401, 403)


class InfluxError(RemoteError):
    service = "InfluxDB"


class KapacitorError(RemoteError):
    service = "Kapacitor"


class CoordinatorError(RemoteError):
    service = "coordinator"


class PreflightError(FederationError):
    """The agent or the coordinator cannot start: a check before running failed (a dependency
    does not answer). The message is one line saying which and why."""
