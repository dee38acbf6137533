"""The `federation` executable's entry point.

Kapacitor starts one `federation kapacitor-udf` process per UDF node, all at once when a task
starts, and kills any that has not answered within the UDF timeout. That command therefore
skips loading the CLI (typer, rich and every command's library: over a second of imports) and
goes straight to the UDF; every other command runs through `federation.cli.main`.
"""

from __future__ import annotations

import logging
import sys

UDF_ARGV = ["kapacitor-udf"]


def main() -> None:
    """Run `federation kapacitor-udf` directly, anything else through the CLI."""
    if sys.argv[1:] == UDF_ARGV:
        from federation.kapacitor.udf import serve_stdio

        logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
        sys.exit(serve_stdio())
    from federation.cli import main as cli_main

    cli_main()
