"""One path for a retention change, whatever the flags: before `policy apply --direct` writes
to the DCs' InfluxDB, the coordinator the agents pull from must desire the same retention.

Agents reconcile their raw RP from the coordinator's desired state every few seconds, and a
retention that grows back is not a shrink, so an agent would undo a direct shrink at once if the
coordinator still held the old config. `sync_coordinator_retention` therefore runs first:

- fleet.yaml names an operator token: a dry-run reload shows what the coordinator's config
  directory declares; when it declares another retention for a DC being applied, nothing is
  changed and `RetentionConflict` says so. Otherwise the coordinator reloads (granting the
  shrink when the apply allows one), so its desired state is the one applied directly.
  A coordinator that cannot be reached is a refusal too: its agents would undo the change.
- only a reader token: what the coordinator serves (`GET /api/v1/dcs`) is compared the same
  way, and a difference is refused; an unreachable coordinator is reported, not refused.
- no token: nothing can be asked; the outcome says so.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from federation.clients.operator import OperatorClient
from federation.config import FederationConfig
from federation.errors import CoordinatorError, FederationError
from federation.policy.retention import RetentionSpec, desired_retention


class RetentionConflict(FederationError):
    """The coordinator the agents pull from desires another retention than the one applied."""


@dataclass(frozen=True)
class CoordinatorSync:
    """What was done at the coordinator before a direct apply.

    `state` is `reloaded` (its desired state now matches), `matches` (it serves the same
    retention already), or `unchecked` (it could not be asked; `detail` says why).
    """

    url: str
    state: str
    detail: str = ""


def _differences(
    config: FederationConfig, dcs: Sequence[str], served: Mapping[str, Any]
) -> list[str]:
    """One line per DC whose `served` retention specs (plain dicts) differ from `config`'s."""
    lines = []
    for dc in dcs:
        wanted = desired_retention(config, dc).policies
        specs = served.get(dc)
        held = None if specs is None else tuple(RetentionSpec.from_dict(s) for s in specs)
        if held != wanted:
            lines.append(
                f"{dc}: the coordinator desires {_specs(held)}, this config {_specs(wanted)}"
            )
    return lines


def _specs(specs: Sequence[RetentionSpec] | None) -> str:
    if specs is None:
        return "nothing"
    return ", ".join(
        f"{s.name} {s.as_dict()['duration']} (shards {s.as_dict()['shard_duration']})"
        for s in specs
    )


def _conflict(url: str, lines: Sequence[str], how: str) -> RetentionConflict:
    return RetentionConflict(
        f"the coordinator at {url} holds another retention config ({'; '.join(lines)}); its "
        f"agents would undo a direct apply at their next reconcile. Nothing was changed: {how}"
    )


def sync_coordinator_retention(
    config: FederationConfig,
    dcs: Sequence[str],
    *,
    allow_shrink: bool = False,
    environ: Mapping[str, str] | None = None,
    transport: httpx.BaseTransport | None = None,
    timeout: float = 10.0,
) -> CoordinatorSync:
    """Make the coordinator desire `config`'s retention for `dcs` before a direct apply.

    Raises RetentionConflict (nothing changed anywhere) when the coordinator's config declares
    another retention for one of `dcs`, or when fleet.yaml names an operator token and the
    coordinator cannot be reached or refuses the reload.
    """
    env = os.environ if environ is None else environ
    central = config.fleet.central
    url = central.coordinator_url
    if not dcs:
        return CoordinatorSync(url, "matches", "no DC retention is applied")
    operator = env.get(central.operator_token_env) if central.operator_token_env else None
    if operator:
        with OperatorClient(url, operator, timeout=timeout, transport=transport) as client:
            try:
                dry = client.reload(dry_run=True)
                served = {str(d["dc"]): d.get("desired_retention") for d in dry.get("dcs", [])}
                lines = _differences(config, dcs, served)
                if lines:
                    raise _conflict(
                        url, lines, "put this config in the coordinator's config directory first"
                    )
                client.reload(allow_shrink=list(dcs) if allow_shrink else None)
            except RetentionConflict:
                raise
            except FederationError as exc:
                raise RetentionConflict(
                    f"cannot make the coordinator desire this retention too ({exc}); its agents "
                    "would undo a direct apply. Nothing was changed"
                ) from None
        detail = "its desired retention is this config's"
        if allow_shrink:
            detail += f"; the agents of {', '.join(dcs)} may shrink to it"
        return CoordinatorSync(url, "reloaded", detail)
    reader = env.get(central.reader_token_env) if central.reader_token_env else None
    if not reader:
        return CoordinatorSync(
            url, "unchecked", "fleet.yaml names no coordinator token that is set"
        )
    with OperatorClient(url, reader, timeout=timeout, transport=transport) as client:
        try:
            overview = client.dcs(list(dcs))
        except CoordinatorError as exc:
            return CoordinatorSync(url, "unchecked", str(exc))
    served = {str(d.get("dc")): (d.get("retention") or {}).get("desired") for d in overview}
    lines = _differences(config, dcs, served)
    if lines:
        raise _conflict(
            url, lines, "reload the coordinator with this config (`federation policy apply` "
            "through it needs central.operator_token_env), or restart it",
        )  # fmt: skip
    return CoordinatorSync(url, "matches", "it serves this retention already")
