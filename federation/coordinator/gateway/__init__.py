"""The gateway: an InfluxDB-1.x-compatible write endpoint that refuses what a plan does not allow.

Every DC ships here (`POST /write`, `GET /ping`). A batch passes through, in order:

- `http`: authentication, db/rp, body size and gzip, one DC's batches one at a time, the
  forward to central and the ledger update after central answered 204;
- `parse`: `parse(body)`, one reader that hides three (`wire`'s fast readers, the general
  `federation.core.lineprotocol.parse`);
- `rules`: `GatewayChecker`, every content rule (with `detections` for detection counts);
- `refusal`: `Refusal`, what a refused batch answers and logs (never a value);
- `counters`: the replica's gateway counters that `/metrics` reads.
"""
