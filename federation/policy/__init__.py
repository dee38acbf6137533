"""Retention and personal-data policy enforced on InfluxDB: plan, apply, audit, erase.

- `retention`: the RPs each region declares, as plain desired state; `reconcile_retention` (what
  an agent runs on every reconcile), `plan_retention` and `apply_retention` over a whole fleet.
- `audit`: evidence for an auditor that every DC and central comply (`audit_report`: what it
  reports; `lifetime`: how long points really live, from the shard groups InfluxDB holds).
- `erase`: the right to erasure, by redacting a subject's raw fields in place.
"""

from __future__ import annotations

from federation.policy.audit import DEFAULT_CHECK_INTERVAL_NS, audit, personal_patterns
from federation.policy.audit_report import (
    AuditReport,
    CentralAudit,
    DcAudit,
    OldestPoint,
    RetentionEvidence,
    Violation,
)
from federation.policy.erase import (
    AUDIT_DATABASE,
    DEFAULT_SALT_ENV,
    ERASURE_MEASUREMENT,
    REDACTED,
    ErasureBlocked,
    ErasureError,
    ErasureRecord,
    ErasureResult,
    FieldRedaction,
    erase_subject,
    erasure_records,
    subject_hash,
)
from federation.policy.retention import (
    CENTRAL,
    Change,
    ChangeKind,
    DesiredRetention,
    PlanRow,
    ReconcileResult,
    RetentionSpec,
    TargetOutcome,
    apply_retention,
    desired_central_retention,
    desired_retention,
    diff_retention,
    outcome_rows,
    plan_retention,
    reconcile_retention,
    retention_targets,
)

__all__ = [
    "AUDIT_DATABASE",
    "CENTRAL",
    "DEFAULT_CHECK_INTERVAL_NS",
    "DEFAULT_SALT_ENV",
    "ERASURE_MEASUREMENT",
    "REDACTED",
    "AuditReport",
    "CentralAudit",
    "Change",
    "ChangeKind",
    "DcAudit",
    "DesiredRetention",
    "ErasureBlocked",
    "ErasureError",
    "ErasureRecord",
    "ErasureResult",
    "FieldRedaction",
    "OldestPoint",
    "PlanRow",
    "ReconcileResult",
    "RetentionEvidence",
    "RetentionSpec",
    "TargetOutcome",
    "Violation",
    "apply_retention",
    "audit",
    "desired_central_retention",
    "desired_retention",
    "diff_retention",
    "erase_subject",
    "erasure_records",
    "outcome_rows",
    "personal_patterns",
    "plan_retention",
    "reconcile_retention",
    "retention_targets",
    "subject_hash",
]
