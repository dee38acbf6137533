"""The Kapacitor backend: HTTP client, the process UDF, deploy and rollout."""
