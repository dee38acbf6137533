"""Config models and loading: fleet, per-region policies, the aggregation and detection catalog."""

from __future__ import annotations

from federation.config.loader import FederationConfig, load_config
from federation.config.models import (
    Aggregation,
    Central,
    CentralRetention,
    DataCenter,
    Detection,
    DetectionSource,
    Fleet,
    InfluxEndpoint,
    KapacitorEndpoint,
    Policy,
    RawMeasurement,
    RawRetention,
    Source,
    Threshold,
)

__all__ = [
    "Aggregation",
    "Central",
    "CentralRetention",
    "DataCenter",
    "Detection",
    "DetectionSource",
    "FederationConfig",
    "Fleet",
    "InfluxEndpoint",
    "KapacitorEndpoint",
    "Policy",
    "RawMeasurement",
    "RawRetention",
    "Source",
    "Threshold",
    "load_config",
]
