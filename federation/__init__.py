"""federation: GDPR-aware federated aggregation of event-log time series kept in InfluxDB 1.x.

Raw events stay in the data center that produced them; only aggregates without personal data
(exact summaries plus mergeable histograms) reach the central InfluxDB, through a gateway that
refuses anything personal.
"""

from __future__ import annotations

__version__ = "0.1.0"
