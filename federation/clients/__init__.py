"""Clients of the coordinator's HTTP API: replicas, fail-over, the operator's calls."""
