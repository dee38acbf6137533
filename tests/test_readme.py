"""The README documents every command, and its two set-up commands exist."""

from __future__ import annotations

from pathlib import Path

import typer.main

from federation.cli import app

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def command_names() -> list[str]:
    root = typer.main.get_command(app)
    names = []
    for name, command in root.commands.items():  # type: ignore[attr-defined]
        subcommands = getattr(command, "commands", None)
        if subcommands:
            names += [f"{name} {sub}" for sub in subcommands]
        else:
            names.append(name)
    return sorted(names)


def test_every_command_is_documented() -> None:
    missing = [
        name
        for name in command_names()
        if f"federation {name}" not in README and name != "kapacitor-udf"
    ]
    assert not missing, f"commands missing from README.md: {missing}"


def test_kapacitor_udf_is_explained_through_the_config_it_belongs_to() -> None:
    assert "kapacitor-udf" in command_names()
    assert "federation kapacitor config" in README


def test_the_two_setup_commands_are_make_targets() -> None:
    makefile = (Path(__file__).resolve().parent.parent / "Makefile").read_text()
    assert "make demo" in README and "make test" in README
    assert "\ndemo:" in makefile and "\ntest:" in makefile
