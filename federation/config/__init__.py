"""Config models and loading: fleet, per-region policies, the aggregation catalog."""

from __future__ import annotations

from federation.config.loader import FederationConfig, load_config
from federation.config.models import (
    Aggregation,
    Central,
    CentralRetention,
    DataCenter,
    Fleet,
    InfluxEndpoint,
    KapacitorEndpoint,
    Policy,
    RawMeasurement,
    RawRetention,
    Source,
)

__all__ = [
    "Aggregation",
    "Central",
    "CentralRetention",
    "DataCenter",
    "FederationConfig",
    "Fleet",
    "InfluxEndpoint",
    "KapacitorEndpoint",
    "Policy",
    "RawMeasurement",
    "RawRetention",
    "Source",
    "load_config",
]
