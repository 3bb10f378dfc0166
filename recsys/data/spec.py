"""Feature spec: the YAML contract between a behavior log and the models.

A spec names the log's columns and their roles, how raw ids become embedding rows, the label, the
time split, the history window and the chunking parameters of SparseCTR §2. It is validated by
pydantic with unknown keys forbidden, so a typo is an error that names the offending key path.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

TimestampUnit = Literal["s", "ms", "us", "arrow"]
CANONICAL_REQUIRED = ("user_id", "item_id", "timestamp", "action")


class SpecError(ValueError):
    """A feature spec that cannot be used; the message names the file and key."""


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TableConfig(StrictModel):
    """One embedding table. Row 0 is always the out-of-vocabulary row.

    `vocab`: rows 1.. are the ids seen in the training period (at least `min_count` times), then
    `reserved` tokens (e.g. the candidates' action) follow. `hash`: a stable 64-bit hash of the id
    modulo `buckets - 1`, plus 1, so hashing never collides with the OOV row.
    """

    name: str
    dim: int = Field(gt=0)
    encoding: Literal["vocab", "hash"] = "vocab"
    min_count: int = Field(default=1, ge=1)
    buckets: int | None = Field(default=None, gt=1)
    reserved: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _buckets_iff_hash(self) -> TableConfig:
        if self.encoding == "hash" and self.buckets is None:
            raise ValueError(f"table {self.name!r}: encoding 'hash' needs 'buckets'")
        if self.encoding == "vocab" and self.buckets is not None:
            raise ValueError(f"table {self.name!r}: 'buckets' only applies to encoding 'hash'")
        if self.encoding == "hash" and self.reserved:
            raise ValueError(f"table {self.name!r}: 'reserved' tokens need encoding 'vocab'")
        return self


class FieldConfig(StrictModel):
    """A log column that is embedded.

    role `sequence`: a field of every event; it enters the history and, when `candidate` is true,
    describes the candidate too (history and candidate share the table). role `profile`: a user
    field pooled into e_U. role `context`: a per-request field.
    """

    column: str
    table: str
    role: Literal["sequence", "profile", "context"]
    candidate: bool = True


class LabelConfig(StrictModel):
    """Either `column` (values 0/1, null = not a CTR sample) or `rule`.

    A rule is `<column> <op> <number>` with op in >=, >, <=, <, ==, != or `<column> in [a, b, ...]`.
    Rows whose rule column is null are not samples (they still enter the history).
    """

    column: str | None = None
    rule: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> LabelConfig:
        if (self.column is None) == (self.rule is None):
            raise ValueError("label: give exactly one of 'column' or 'rule'")
        if self.rule is not None:
            parse_label_rule(self.rule)
        return self


_COMPARISON = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(>=|<=|==|!=|>|<)\s*(-?[0-9.]+)\s*$")
_MEMBERSHIP = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s+in\s+\[(.*)\]\s*$")


def parse_label_rule(rule: str) -> tuple[str, str, float | list[str]]:
    """Parse a label rule into (column, operator, operand)."""
    match = _COMPARISON.match(rule)
    if match:
        return match.group(1), match.group(2), float(match.group(3))
    match = _MEMBERSHIP.match(rule)
    if match:
        items = [item.strip().strip("'\"") for item in match.group(2).split(",") if item.strip()]
        if not items:
            raise ValueError(f"label rule {rule!r}: empty list")
        return match.group(1), "in", items
    raise ValueError(f"label rule {rule!r}: expected '<column> <op> <number>' or '<column> in [a, b]'")


def _parse_time_point(value: int | float | str) -> int | float:
    """An int is epoch seconds, a float in (0, 1) a quantile of event time, a str an ISO date."""
    if isinstance(value, str):
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        return int(parsed.timestamp())
    if isinstance(value, float):
        if not 0.0 < value < 1.0:
            raise ValueError(f"a float split point is a quantile in (0, 1), got {value}")
        return value
    return int(value)


class SplitConfig(StrictModel):
    """Global time cut-offs: samples before `valid_start` train, then valid, from `test_start` test.

    Each point is epoch seconds (int), an ISO date (str) or a quantile of event timestamps (float).
    Vocabularies are built on events before `valid_start` only.
    """

    valid_start: int | float | str
    test_start: int | float | str

    @field_validator("valid_start", "test_start")
    @classmethod
    def _time_point(cls, value: int | float | str) -> int | float:
        return _parse_time_point(value)


class ChunkingConfig(StrictModel):
    """SparseCTR §2/§3: P personalized chunks, the last `tail_length` events of every chunk, and
    the local causal window `window`."""

    num_chunks: int = Field(default=16, ge=1)
    tail_length: int = Field(default=2, ge=1)
    window: int = Field(default=64, ge=1)


class HistoryConfig(StrictModel):
    """The history window: the most recent `max_length` events strictly before a sample's time.

    `exclude_actions` lists actions whose events are samples only and never history (for example
    sampled negatives that the user never saw)."""

    max_length: int = Field(gt=0)
    exclude_actions: tuple[str, ...] = ()


class SourceConfig(StrictModel):
    timestamp_unit: TimestampUnit = "s"
    timezone: str = "UTC"


class FeatureSpec(StrictModel):
    name: str
    source: SourceConfig = SourceConfig()
    tables: tuple[TableConfig, ...]
    fields: tuple[FieldConfig, ...]
    label: LabelConfig
    split: SplitConfig
    history: HistoryConfig
    chunking: ChunkingConfig = ChunkingConfig()
    action_groups: dict[str, tuple[str, ...]] = Field(
        default_factory=dict,
        description="Named groups of action values (GRAB's CamA channels), e.g. click: [click, conversion].",
    )

    @model_validator(mode="after")
    def _consistent(self) -> FeatureSpec:
        table_names = [table.name for table in self.tables]
        if len(set(table_names)) != len(table_names):
            raise ValueError(f"tables: duplicate names in {table_names}")
        columns = [f.column for f in self.fields]
        if len(set(columns)) != len(columns):
            raise ValueError(f"fields: a column appears twice in {columns}")
        for f in self.fields:
            if f.table not in table_names:
                raise ValueError(f"fields: column {f.column!r} uses unknown table {f.table!r}")
        sequence_columns = {f.column for f in self.fields if f.role == "sequence"}
        for required in ("item_id", "action"):
            if required not in sequence_columns:
                raise ValueError(f"fields: {required!r} must be a sequence field")
        if self.action_field.candidate:
            raise ValueError("fields: 'action' cannot describe a candidate (its outcome is the label)")
        return self

    @property
    def action_field(self) -> FieldConfig:
        return next(f for f in self.fields if f.column == "action")

    def table(self, name: str) -> TableConfig:
        return next(t for t in self.tables if t.name == name)

    def fields_with_role(self, role: str) -> list[FieldConfig]:
        return [f for f in self.fields if f.role == role]

    @property
    def input_columns(self) -> list[str]:
        """Every log column the spec reads (beyond the canonical ones)."""
        extra = [f.column for f in self.fields]
        if self.label.column:
            extra.append(self.label.column)
        if self.label.rule:
            extra.append(parse_label_rule(self.label.rule)[0])
        ordered = list(CANONICAL_REQUIRED) + extra
        return list(dict.fromkeys(ordered))


def _format_validation_error(path: str, error: ValidationError) -> str:
    lines = [f"invalid feature spec {path}:"]
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "<root>"
        lines.append(f"  {where}: {item['msg']}")
    return "\n".join(lines)


def load_spec(path: str | Path) -> FeatureSpec:
    """Read and validate a YAML feature spec; errors name the file and the key path."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SpecError(f"cannot read feature spec {path}: {exc}") from exc
    return spec_from_dict(raw, source=str(path))


def spec_from_dict(raw: object, source: str = "<dict>") -> FeatureSpec:
    if not isinstance(raw, dict):
        raise SpecError(f"invalid feature spec {source}: expected a mapping at the top level")
    try:
        return FeatureSpec.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(_format_validation_error(source, exc)) from exc
