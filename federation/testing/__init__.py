"""Test doubles for what no package registry ships (Kapacitor), following its documented API."""

from __future__ import annotations

from federation.testing.kapacitor_emulator import EmulatorTransport, KapacitorEmulator

__all__ = ["EmulatorTransport", "KapacitorEmulator"]
