"""Load and cross-check a federation's config directory, reporting every problem at once.

Layout of a config directory:

    fleet.yaml                  regions, DCs, central
    policies/<region>.yaml      one per region
    tickscripts/<name>.yaml     one per aggregation, beside the Jinja templates it names
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from federation.config.models import (
    Aggregation,
    DataCenter,
    Detection,
    Fleet,
    Policy,
    RawMeasurement,
)
from federation.config.yamlfile import KeyLines, load_yaml
from federation.errors import ConfigError, ConfigProblems

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class FederationConfig:
    """Everything declared in one config directory, validated and cross-checked."""

    root: Path
    fleet: Fleet
    policies: dict[str, Policy]
    aggregations: dict[str, Aggregation]
    policy_hashes: dict[str, str] = field(default_factory=dict)
    templates_dir: Path = Path("tickscripts")
    detections: dict[str, Detection] = field(default_factory=dict)

    @property
    def tracked(self) -> dict[str, Aggregation | Detection]:
        """Every aggregation and detection by name (one namespace): what the ledger tracks."""
        return {**self.aggregations, **self.detections}

    def dc(self, name: str) -> DataCenter:
        """The DC called `name`; ConfigError naming the known DCs otherwise."""
        try:
            return self.fleet.dcs[name]
        except KeyError:
            known = ", ".join(sorted(self.fleet.dcs))
            raise ConfigError(
                "fleet.yaml", "dcs", f"no DC named {name!r} (known: {known})"
            ) from None

    def policy_for(self, dc: str) -> Policy:
        """The policy of the region `dc` belongs to."""
        return self.policies[self.dc(dc).region]


def _loc_path(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc)


def line_for(lines: KeyLines, path: str) -> int | None:
    """The line of `path`, or of its nearest parent key that has one."""
    parts = path.split(".")
    while parts:
        line = lines.get(".".join(parts))
        if line is not None:
            return line
        parts.pop()
    return None


def _problems_from(exc: ValidationError, file: str, lines: KeyLines) -> list[ConfigError]:
    problems = []
    for err in exc.errors(include_url=False):
        path = _loc_path(tuple(err["loc"]))
        message = err["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if err["type"] == "extra_forbidden":
            message = "unknown key"
        problems.append(ConfigError(file, path, message, line_for(lines, path)))
    return problems


def _load_mapping(
    path: Path, display: str, problems: list[ConfigError]
) -> tuple[dict[str, object] | None, KeyLines]:
    try:
        data, lines = load_yaml(path, display)
    except ConfigProblems as exc:
        problems.extend(exc.problems)
        return None, {}
    except ConfigError as exc:
        problems.append(exc)
        return None, {}
    if not isinstance(data, dict):
        problems.append(ConfigError(display, "", "expected a mapping at the top level"))
        return None, lines
    return data, lines


def _validate(
    model: type[M], data: dict[str, object], display: str, lines: KeyLines,
    problems: list[ConfigError],
) -> M | None:  # fmt: skip
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems.extend(_problems_from(exc, display, lines))
        return None


def parse_model_file(
    model: type[M], path: Path, display: str, problems: list[ConfigError]
) -> tuple[M | None, KeyLines]:
    """Load one YAML file into `model`; append every problem (with lines) to `problems`.

    Returns the model (None when it did not validate) and the key lines, for further checks.
    """
    data, lines = _load_mapping(path, display, problems)
    if data is None:
        return None, lines
    return _validate(model, data, display, lines, problems), lines


def parse_catalog_file(
    path: Path, display: str, problems: list[ConfigError]
) -> tuple[Aggregation | Detection | None, KeyLines]:
    """One file of the catalog in `tickscripts/`: an aggregation, or (`kind: detection`) a
    detection; problems appended as `parse_model_file` does."""
    data, lines = _load_mapping(path, display, problems)
    if data is None:
        return None, lines
    if data.get("kind", "aggregation") == "detection":
        return _validate(Detection, data, display, lines, problems), lines
    return _validate(Aggregation, data, display, lines, problems), lines


def load_config(root: Path | str = ".") -> FederationConfig:
    """Load fleet, policies and aggregations under `root`, then cross-check them.

    Raises ConfigProblems listing every problem found (file, key path, line), so a user fixes
    them all in one round. Returns only a configuration in which every check passed.
    """
    root = Path(root)
    problems: list[ConfigError] = []

    def rel(path: Path) -> str:
        try:
            return str(path.relative_to(root))
        except ValueError:
            return str(path)

    fleet_path = root / "fleet.yaml"
    if not fleet_path.exists():
        raise ConfigProblems([ConfigError(rel(fleet_path), "", "not found")])
    fleet, fleet_lines = parse_model_file(Fleet, fleet_path, rel(fleet_path), problems)

    policies: dict[str, Policy] = {}
    policy_lines: dict[str, tuple[str, KeyLines]] = {}
    hashes: dict[str, str] = {}
    for path in sorted((root / "policies").glob("*.yaml")):
        policy, lines = parse_model_file(Policy, path, rel(path), problems)
        if policy is None:
            continue
        if policy.region != path.stem:
            problems.append(
                ConfigError(
                    rel(path),
                    "region",
                    f"is {policy.region!r} but the file is named for {path.stem!r}",
                    lines.get("region"),
                )
            )
            continue
        policies[policy.region] = policy
        policy_lines[policy.region] = (rel(path), lines)
        hashes[policy.region] = hashlib.sha256(path.read_bytes()).hexdigest()

    templates_dir = root / "tickscripts"
    aggregations: dict[str, Aggregation] = {}
    detections: dict[str, Detection] = {}
    catalog_lines: dict[str, tuple[str, KeyLines]] = {}
    for path in sorted(templates_dir.glob("*.yaml")):
        entry, lines = parse_catalog_file(path, rel(path), problems)
        if entry is None:
            continue
        if entry.name in catalog_lines:
            # Aggregations and detections share one namespace: central measurements, the
            # manifest's `aggregation` tag and Kapacitor task ids are all named by it.
            first = catalog_lines[entry.name][0]
            problems.append(
                ConfigError(
                    rel(path),
                    "name",
                    f"{entry.kind} {entry.name!r}: the name is also declared in {first}",
                    lines.get("name"),
                )
            )
            continue
        if isinstance(entry, Detection):
            detections[entry.name] = entry
        else:
            aggregations[entry.name] = entry
        catalog_lines[entry.name] = (rel(path), lines)
        if not (templates_dir / entry.template).is_file():
            problems.append(
                ConfigError(
                    rel(path),
                    "template",
                    f"template file {rel(templates_dir / entry.template)} does not exist",
                    lines.get("template"),
                )
            )

    for region, policy in policies.items():
        _check_policy(policy, *policy_lines[region], problems.append)

    if fleet is not None:
        _check_fleet(fleet, rel(fleet_path), fleet_lines, policies, problems.append, root)
        for name, aggregation in aggregations.items():
            problem = _problem_in(*catalog_lines[name], problems.append)
            _check_aggregation(aggregation, fleet, policies, problem)
        for name, detection in detections.items():
            problem = _problem_in(*catalog_lines[name], problems.append)
            _check_detection(detection, fleet, policies, problem)

    if problems:
        raise ConfigProblems(problems)
    assert fleet is not None
    return FederationConfig(
        root=root,
        fleet=fleet,
        policies=policies,
        aggregations=aggregations,
        policy_hashes=hashes,
        templates_dir=templates_dir,
        detections=detections,
    )


Report = Callable[[ConfigError], None]
Problem = Callable[[str, str], None]
"""Report a problem at a key path of one file: `problem("source.field", "is personal data")`."""


def _problem_in(file: str, lines: KeyLines, report: Report) -> Problem:
    def problem(path: str, message: str) -> None:
        report(ConfigError(file, path, message, line_for(lines, path)))

    return problem


def _check_policy(policy: Policy, file: str, lines: KeyLines, report: Report) -> None:
    for name, measurement in policy.measurements.items():
        for index, dimension in enumerate(measurement.exportable_dimensions):
            if dimension in measurement.personal_keys:
                path = f"measurements.{name}.exportable_dimensions.{index}"
                report(
                    ConfigError(
                        file,
                        path,
                        f"{dimension!r} is declared personal data in this region "
                        "and can never be exported",
                        line_for(lines, path),
                    )
                )


def _check_fleet(
    fleet: Fleet,
    file: str,
    lines: KeyLines,
    policies: dict[str, Policy],
    report: Report,
    root: Path,
) -> None:
    for region in fleet.regions:
        # A policy file that exists but failed to load has its own problems reported already.
        if region not in policies and not (root / "policies" / f"{region}.yaml").exists():
            path = f"regions.{region}"
            report(
                ConfigError(
                    file,
                    path,
                    f"no policy file policies/{region}.yaml for this region",
                    line_for(lines, path),
                )
            )
    for region in policies:
        if region not in fleet.regions:
            report(
                ConfigError(
                    f"policies/{region}.yaml",
                    "region",
                    f"region {region!r} is not declared in fleet.yaml",
                )
            )
    for name, dc in fleet.dcs.items():
        if dc.region not in fleet.regions:
            path = f"dcs.{name}.region"
            known = ", ".join(sorted(fleet.regions))
            report(
                ConfigError(
                    file,
                    path,
                    f"unknown region {dc.region!r} (known: {known})",
                    line_for(lines, path),
                )
            )


def _source_per_region(
    measurement: str,
    fleet: Fleet,
    policies: dict[str, Policy],
    problem: Problem,
) -> Iterator[tuple[Policy, str, RawMeasurement]]:
    """Each region with a DC that declares `measurement`: its policy, a `where` for messages,
    and the measurement's declaration; a region that does not declare it is a problem."""
    regions = sorted({dc.region for dc in fleet.dcs.values() if dc.region in policies})
    for region in regions:
        policy = policies[region]
        where = f"in region {region} (policies/{region}.yaml)"
        declared = policy.measurements.get(measurement)
        if declared is None:
            problem(
                "source.measurement",
                f"measurement {measurement!r} is not declared {where}, "
                "so its personal data is unknown",
            )
            continue
        yield policy, where, declared


def _check_aggregation(
    aggregation: Aggregation,
    fleet: Fleet,
    policies: dict[str, Policy],
    problem: Problem,
) -> None:
    source = aggregation.source.measurement
    for policy, where, measurement in _source_per_region(source, fleet, policies, problem):
        if aggregation.source.field in measurement.personal_keys:
            problem("source.field", f"{aggregation.source.field!r} is personal data {where}")
        for index, dimension in enumerate(aggregation.dimensions):
            if dimension in measurement.personal_keys:
                problem(f"dimensions.{index}", f"{dimension!r} is personal data {where}")
        if (
            aggregation.min_group_events is not None
            and aggregation.min_group_events < policy.min_group_events
        ):
            problem(
                "min_group_events",
                f"{aggregation.min_group_events} is below the minimum group size "
                f"{policy.min_group_events} {where}; an aggregation may ask for more, never less",
            )


def _check_detection(
    detection: Detection,
    fleet: Fleet,
    policies: dict[str, Policy],
    problem: Problem,
) -> None:
    """A detection must be keyed by personal data in every region with a DC: keyed by anything
    else it would be an aggregation, whose groups belong at central under k-anonymity."""

    source = detection.source.measurement
    for _, where, measurement in _source_per_region(source, fleet, policies, problem):
        if detection.per not in measurement.personal_keys:
            problem(
                "per",
                f"{detection.per!r} is not personal data {where}: a detection is keyed by "
                "personal data (otherwise declare an aggregation)",
            )
