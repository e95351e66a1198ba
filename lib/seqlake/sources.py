"""Source formats as configuration: ``conf/sources/<name>.yaml`` maps a raw format to the canonical event.

A source file says how to split a raw line into fields (JSON object or delimited text), which
raw field feeds each canonical field (or which fixed value, where the files have no column for
it), how to read its timestamps, what its event-type names mean and which lines are not events
at all. Adding a format is adding a file; see docs/ingestion.md, "Adding a source format".
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from seqlake.config import ConfigError
from seqlake.constants import CANONICAL_FIELDS, EVENT_TYPES, REQUIRED_FIELDS

TIME_FORMATS_BUILTIN = ("iso8601", "unix_seconds", "unix_millis")
_KNOWN_KEYS = {"name", "description", "format", "columns", "header", "delimiter", "quote", "fields",
               "timestamp", "event_types", "file_glob", "constants", "integer_fields", "exclude"}
_RULE_KEYS = {"field", "starts_with", "in"}


@dataclass(frozen=True)
class ExcludeRule:
    """Lines whose raw ``field`` starts with ``starts_with`` or is one of ``values`` are not events
    (a cancellation, a postage line): they are quarantined as ``excluded_<name>``."""
    name: str
    field: str
    starts_with: str | None = None
    values: tuple[str, ...] = ()


@dataclass(frozen=True)
class SourceSpec:
    name: str
    format: str  # "json" or "csv"
    fields: dict[str, str]  # canonical field -> raw field name
    time_format: str  # iso8601 | unix_seconds | unix_millis | a Spark datetime pattern
    timezone: str  # zone of pattern timestamps without an offset
    event_types: dict[str, str]  # raw name (lower-cased) -> canonical event type
    columns: tuple[str, ...] = ()  # csv: column names in file order
    header: bool = False  # csv: first line of each file is a header
    delimiter: str = ","
    quote: str = '"'
    file_glob: str = "*"
    constants: dict[str, str] = field(default_factory=dict)  # canonical field -> raw value of every line
    integer_fields: tuple[str, ...] = ()  # canonical ids written as floats: "17850.0" -> "17850"
    exclude: tuple[ExcludeRule, ...] = ()

    @property
    def raw_columns(self) -> tuple[str, ...]:
        """Raw field names parsed from each record."""
        if self.format == "csv":
            return self.columns
        return tuple(dict.fromkeys([*self.fields.values(), *(rule.field for rule in self.exclude)]))

    @property
    def header_line(self) -> str | None:
        return self.delimiter.join(self.columns) if self.format == "csv" and self.header else None


def load_source(sources_dir: str, name: str) -> SourceSpec:
    """Load and validate ``<sources_dir>/<name>.yaml``; errors name the file and key."""
    if not re.fullmatch(r"[a-z0-9_]+", name):
        raise ConfigError(f"--source {name!r}: expected lower-case letters, digits and underscores")
    path = Path(sources_dir) / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in Path(sources_dir).glob("*.yaml"))
        raise ConfigError(f"source {name!r}: no file {path} (known sources: {', '.join(known) or 'none'})")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_source(raw, where=str(path), name=name)


def parse_source(raw: dict[str, Any], *, where: str, name: str) -> SourceSpec:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping")
    unknown = sorted(set(raw) - _KNOWN_KEYS)
    if unknown:
        raise ConfigError(f"{where}: {unknown[0]}: unknown key (known: {', '.join(sorted(_KNOWN_KEYS))})")
    if raw.get("name", name) != name:
        raise ConfigError(f"{where}: name: expected {name!r} (the file name), got {raw.get('name')!r}")
    fmt = raw.get("format")
    if fmt not in ("json", "csv"):
        raise ConfigError(f"{where}: format: expected 'json' or 'csv', got {fmt!r}")
    fields = raw.get("fields")
    if not isinstance(fields, dict):
        raise ConfigError(f"{where}: fields: expected a mapping of canonical field -> raw field")
    bad = sorted(set(fields) - set(CANONICAL_FIELDS))
    if bad:
        raise ConfigError(f"{where}: fields.{bad[0]}: not a canonical field (known: {', '.join(CANONICAL_FIELDS)})")
    constants = raw.get("constants") or {}
    if not isinstance(constants, dict):
        raise ConfigError(f"{where}: constants: expected a mapping of canonical field -> value")
    bad = sorted(set(constants) - set(CANONICAL_FIELDS))
    if bad:
        raise ConfigError(f"{where}: constants.{bad[0]}: not a canonical field (known: {', '.join(CANONICAL_FIELDS)})")
    for canonical, value in constants.items():
        if canonical in fields:
            raise ConfigError(f"{where}: constants.{canonical}: also mapped in fields (give one or the other)")
        if not isinstance(value, (str, int, float)) or isinstance(value, bool) or not str(value).strip():
            raise ConfigError(f"{where}: constants.{canonical}: expected a non-empty text or number, got {value!r}")
    missing = [f for f in REQUIRED_FIELDS if f not in fields and f not in constants]
    if missing:
        raise ConfigError(f"{where}: fields.{missing[0]}: required canonical field is not mapped")
    fields = {str(k): str(v) for k, v in fields.items()}
    integer_fields = raw.get("integer_fields") or []
    if not isinstance(integer_fields, list) or any(f not in fields for f in integer_fields):
        raise ConfigError(f"{where}: integer_fields: expected a list of canonical fields mapped in fields, "
                          f"got {integer_fields!r}")
    columns: tuple[str, ...] = ()
    if fmt == "csv":
        cols = raw.get("columns")
        if not isinstance(cols, list) or not cols:
            raise ConfigError(f"{where}: columns: expected the list of CSV column names in file order")
        columns = tuple(str(c) for c in cols)
        unmapped = sorted(set(fields.values()) - set(columns))
        if unmapped:
            raise ConfigError(f"{where}: fields: raw column {unmapped[0]!r} is not in columns")
    exclude = _exclude_rules(raw.get("exclude") or {}, where=where,
                             raw_names=set(columns) if fmt == "csv" else None)
    ts = raw.get("timestamp") or {}
    if not isinstance(ts, dict) or "format" not in ts:
        raise ConfigError(f"{where}: timestamp.format: expected iso8601, unix_seconds, unix_millis or a Spark pattern")
    types = raw.get("event_types")
    if not isinstance(types, dict) or not types:
        raise ConfigError(f"{where}: event_types: expected a mapping raw name -> canonical event type")
    for raw_name, canonical in types.items():
        if canonical not in EVENT_TYPES:
            raise ConfigError(
                f"{where}: event_types.{raw_name}: {canonical!r} is not a canonical event type "
                f"({', '.join(EVENT_TYPES)})"
            )
    return SourceSpec(
        name=name,
        format=fmt,
        fields=fields,
        time_format=str(ts["format"]),
        timezone=str(ts.get("timezone", "UTC")),
        event_types={str(k).strip().lower(): str(v) for k, v in types.items()},
        columns=columns,
        header=bool(raw.get("header", False)),
        delimiter=str(raw.get("delimiter", ",")),
        quote=str(raw.get("quote", '"')),
        file_glob=str(raw.get("file_glob", "*")),
        constants={str(k): str(v).strip() for k, v in constants.items()},
        integer_fields=tuple(str(f) for f in integer_fields),
        exclude=exclude,
    )


def _exclude_rules(raw: Any, *, where: str, raw_names: set[str] | None) -> tuple[ExcludeRule, ...]:
    """``exclude: {name: {field: <raw field>, starts_with: <text>}}`` (or ``in: [values]``)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: exclude: expected a mapping of rule name -> {{field, starts_with | in}}")
    rules = []
    for name, rule in raw.items():
        key = f"{where}: exclude.{name}"
        if not re.fullmatch(r"[a-z0-9_]+", str(name)):
            raise ConfigError(f"{key}: a rule name is lower-case letters, digits and underscores (it names "
                              f"the quarantine reason excluded_<name>)")
        if not isinstance(rule, dict) or set(rule) - _RULE_KEYS or "field" not in rule:
            raise ConfigError(f"{key}: expected {{field: <raw field>, starts_with: <text>}} or {{field, in: [..]}}")
        if ("starts_with" in rule) == ("in" in rule):
            raise ConfigError(f"{key}: give exactly one of starts_with and in")
        if raw_names is not None and rule["field"] not in raw_names:
            raise ConfigError(f"{key}.field: raw column {rule['field']!r} is not in columns")
        values = rule.get("in", [])
        if not isinstance(values, list) or ("in" in rule and not values):
            raise ConfigError(f"{key}.in: expected a non-empty list of values")
        starts_with = rule.get("starts_with")
        if starts_with is not None and (not isinstance(starts_with, str) or not starts_with):
            raise ConfigError(f"{key}.starts_with: expected a non-empty text")
        rules.append(ExcludeRule(name=str(name), field=str(rule["field"]), starts_with=starts_with,
                                 values=tuple(str(v) for v in values)))
    return tuple(rules)
