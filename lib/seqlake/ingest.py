"""Raw logs -> the canonical Delta ``events`` table, with every bad row quarantined for a reason.

Contract of one run (source S, window [start, end] of UTC dates):
- Every non-header line of the input is one row read. It ends up in exactly one place: the
  ``events`` table (written), ``events_quarantine`` (with a reason code), or dropped as an exact
  duplicate of an event already written by the run (counted). read = written + quarantined +
  duplicates holds exactly and is checked before the run is recorded as ok.
- Time window rule: an event is accepted only if its UTC date lies inside the run's window;
  older events are quarantined as ``ts_before_window`` (the Taobao sample's stray rows from
  months earlier), later ones as ``ts_after_window`` (future timestamps). A daily run's window
  is its logical date; a backfill passes --from/--to.
- ``events`` rows of S inside the window are replaced atomically (Delta replaceWhere), so a
  rerun leaves identical contents. The quarantine rows of the run's window are replaced too.
- When the quarantined share passes ``ingest.quarantine_threshold`` the quarantine and the
  audit row are written, the events are NOT (downstream stages must not see a broken day), and
  ``QuarantineThresholdExceeded`` is raised. Lines the source's ``exclude`` rules name (a
  cancellation) are quarantined as ``excluded_<rule>`` but are not counted in that share.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import hmac
import re
import uuid
from typing import Callable, Iterator, Sequence

import pandas as pd

import pyspark.sql.functions as F
import pyspark.sql.types as T
from pyspark import Broadcast
from pyspark.sql import Column, DataFrame, Observation, SparkSession, Window

from seqlake import constants as C
from seqlake import schemas, tables
from seqlake.config import Config, ConfigError, join_path
from seqlake.progress import log, stage
from seqlake.sources import SourceSpec

# Field separator for hashing: cannot occur in parsed text fields of sane inputs, and a null is
# encoded as a distinct marker so that null and "" hash differently.
_SEP = "\u001f"
_NULL = "\u0000"
# Seconds bounds for numeric timestamps: outside them a value is garbage, not a date, and
# converting it could overflow.
_MIN_EPOCH_S = -2_208_988_800  # 1900-01-01
_MAX_EPOCH_S = 7_258_118_400  # 2200-01-01


class QuarantineThresholdExceeded(RuntimeError):
    """Too large a share of the input was quarantined; the quarantine was written, events not."""


@dataclasses.dataclass(frozen=True)
class IngestResult:
    run_id: str
    source: str
    window_start: dt.date
    window_end: dt.date
    rows_read: int
    rows_written: int
    rows_quarantined: int
    duplicates_dropped: int
    # Valid rows not written because the run failed its quarantine threshold.
    rows_held_back: int
    quarantined_by_reason: dict[str, int]
    status: str
    message: str

    @property
    def balanced(self) -> bool:
        """rows read = written + quarantined + duplicates (+ held back by a failed run)."""
        return self.rows_read == (
            self.rows_written + self.rows_quarantined + self.duplicates_dropped + self.rows_held_back
        )


# --------------------------------------------------------------------------- transformations


def read_raw_lines(spark: SparkSession, paths: Sequence[str], file_glob: str = "*") -> DataFrame:
    """One row per line of the files under ``paths`` whose names match ``file_glob``:
    raw_record, source_file. The bytes are kept as they are, invalid UTF-8 included (the
    ``bad_encoding`` check finds it)."""
    return spark.read.option("pathGlobFilter", file_glob).text(list(paths)).select(
        F.col("value").alias("raw_record"), F.col("_metadata.file_path").alias("source_file")
    )


def filter_header_lines(lines: DataFrame, *, spec: SourceSpec) -> DataFrame:
    """Drop CSV header lines (lines equal to the configured header), for headered sources."""
    header = spec.header_line
    if header is None:
        return lines
    # A UTF-8 byte-order mark may precede the header of a file.
    return lines.filter(F.regexp_replace("raw_record", "^\ufeff", "") != F.lit(header))


def with_raw_fields(lines: DataFrame, *, spec: SourceSpec) -> DataFrame:
    """Parse each line into string fields ``_raw.<raw name>`` and ``_raw._corrupt_record``.

    Every field is read as a string so that a bad value becomes a quarantine reason later,
    never a parse failure; nested JSON where a scalar is expected arrives as its JSON text.
    """
    schema = T.StructType(
        [T.StructField(name, T.StringType()) for name in spec.raw_columns]
        + [T.StructField("_corrupt_record", T.StringType())]
    )
    options = {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": "_corrupt_record"}
    if spec.format == "json":
        parsed = F.from_json("raw_record", schema, options)
    else:
        options.update({"sep": spec.delimiter, "quote": spec.quote})
        parsed = F.from_csv("raw_record", schema.simpleString(), options)
    return lines.withColumn("_raw", parsed)


def _field(spec: SourceSpec, canonical: str) -> Column:
    """The trimmed raw string feeding ``canonical`` (null if unmapped or blank): the source's
    constant for it where it has one; an integer written as a float ("17850.0") as its digits
    where the source lists the field in ``integer_fields``."""
    if canonical in spec.constants:
        return F.lit(spec.constants[canonical])
    raw_name = spec.fields.get(canonical)
    if raw_name is None:
        return F.lit(None).cast("string")
    text = F.nullif(F.trim(F.col("_raw").getField(raw_name)), F.lit(""))
    if canonical in spec.integer_fields:
        text = F.regexp_replace(text, r"^(-?[0-9]+)\.0*$", "$1")
    return text


def _excluded(spec: SourceSpec) -> tuple[Column, Column] | None:
    """(the name of the first ``exclude`` rule a line matches, its detail), or None without rules."""
    if not spec.exclude:
        return None
    names, details = [], []
    for rule in spec.exclude:
        raw = F.trim(F.col("_raw").getField(rule.field))
        if rule.starts_with is not None:
            matches, says = raw.startswith(rule.starts_with), f"starts with {rule.starts_with!r}"
        else:
            matches, says = raw.isin(list(rule.values)), f"is one of {list(rule.values)}"
        names.append(F.when(matches, F.lit(rule.name)))
        details.append(F.when(matches, F.lit(f"{rule.name}: {rule.field} {says}")))
    return F.coalesce(*names), F.coalesce(*details)


def _parse_timestamp(text: Column, spec: SourceSpec) -> Column:
    fmt = spec.time_format
    if fmt == "iso8601":
        return text.try_cast("timestamp")
    if fmt in ("unix_seconds", "unix_millis"):
        seconds = text.try_cast("double") / (1000.0 if fmt == "unix_millis" else 1.0)
        in_range = seconds.between(_MIN_EPOCH_S, _MAX_EPOCH_S) & ~F.isnan(seconds)
        return F.when(in_range, F.timestamp_micros((seconds * 1_000_000).cast("long")))
    parsed = F.try_to_timestamp(text, F.lit(fmt))
    return parsed if spec.timezone == "UTC" else F.to_utc_timestamp(parsed, spec.timezone)


def with_canonical_fields(parsed: DataFrame, *, spec: SourceSpec) -> DataFrame:
    """Typed canonical columns (``ts``, ``event_type``, ``price`` ...) from the raw strings.

    Unparseable values become null here; ``with_quarantine_reason`` tells a missing value from
    an unparseable one by looking at the raw string (``_s_<field>``).
    """
    mapping = F.create_map(*[F.lit(x) for kv in spec.event_types.items() for x in kv])
    out = parsed
    for name in C.CANONICAL_FIELDS:
        out = out.withColumn(f"_s_{name}", _field(spec, name))
    price = F.col("_s_price").try_cast("double")
    return (
        out.withColumn("ts", _parse_timestamp(F.col("_s_ts"), spec))
        .withColumn("event_type", F.try_element_at(mapping, F.lower(F.col("_s_event_type"))))
        .withColumn("price", F.when(~F.isnan(price) & (F.abs(price) < float("inf")), price))
        .withColumn("event_date", F.to_date("ts"))
    )


def _is_nested(spec: SourceSpec, canonical: str) -> Column:
    """True where the JSON record holds an object or array in ``canonical``'s raw field.

    The string reader gives such a value as its JSON text, which a string id may also look
    like (``"{a b"``), so the record is parsed again, for the rare values that start with
    ``{`` or ``[`` only, and the field's JSON type decides. Delimited text has no nesting.
    """
    if spec.format != "json":
        return F.lit(False)
    text = F.col(f"_s_{canonical}")
    name = spec.fields[canonical]
    path = f"$.{name}" if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) else "$['" + name.replace("'", "\\'") + "']"
    kind = F.schema_of_variant(F.try_variant_get(F.try_parse_json("raw_record"), path, "variant"))
    looks_nested = text.startswith("{") | text.startswith("[")
    return F.when(looks_nested, kind.startswith("OBJECT") | kind.startswith("ARRAY")).otherwise(F.lit(False))


def with_quarantine_reason(
    df: DataFrame,
    *,
    spec: SourceSpec,
    window_start: dt.date,
    window_end: dt.date,
    max_field_chars: int,
    max_record_chars: int,
) -> DataFrame:
    """Add ``reason`` (null for a valid row) and ``detail``: the first failing check, in the
    order of ``constants`` (malformed, encoding, size, nesting, excluded by the source, missing,
    timestamp, window, event type, price)."""
    mapped = [f for f in C.CANONICAL_FIELDS if f in spec.fields]
    # Sizes in bytes (octet_length is O(1) on Spark strings; length() scans for characters).
    lengths = {f: F.octet_length(F.col(f"_s_{f}")) for f in mapped}
    oversized = F.coalesce(*[F.when(lengths[f] > max_field_chars, F.lit(f)) for f in mapped])
    nested = F.coalesce(*[F.when(_is_nested(spec, f), F.lit(f)) for f in C.REQUIRED_FIELDS if f in spec.fields])
    missing = F.coalesce(*[F.when(F.col(f"_s_{f}").isNull(), F.lit(f)) for f in C.REQUIRED_FIELDS])
    blank = (F.octet_length("raw_record") < 8) & (F.trim("raw_record") == "")
    malformed = F.col("_raw._corrupt_record").isNotNull() | blank
    raw_price = F.col("_s_price")

    def excerpt(column: Column) -> Column:
        return F.substring(column, 1, 120)

    checks: list[tuple[Column, Column, Column]] = [
        (malformed, F.lit(C.MALFORMED_RECORD), F.lit(f"not a valid {spec.format} record")),
        # The text reader keeps a line's bytes as they are: invalid UTF-8 arrives undecoded
        # (and would reach Parquet so), or as U+FFFD where an upstream tool replaced it.
        (~F.is_valid_utf8("raw_record") | F.col("raw_record").contains("\ufffd"), F.lit(C.BAD_ENCODING),
         F.lit("invalid UTF-8 bytes")),
        (F.octet_length("raw_record") > max_record_chars, F.lit(C.OVERSIZED_RECORD),
         F.concat(F.lit("record of "), F.octet_length("raw_record").cast("string"),
                  F.lit(f" bytes > {max_record_chars}"))),
        (oversized.isNotNull(), F.lit(C.OVERSIZED_FIELD),
         F.concat(oversized, F.lit(f" longer than {max_field_chars} bytes"))),
        (nested.isNotNull(), F.lit(C.NESTED_VALUE), F.concat(nested, F.lit(" holds an object or array"))),
        # A line the source says is not an event (a cancellation) is that, whatever else it lacks.
        *([(excluded[0].isNotNull(), F.concat(F.lit(C.EXCLUDED_PREFIX), excluded[0]), excluded[1])]
          if (excluded := _excluded(spec)) else []),
        (missing.isNotNull(), F.concat(F.lit(C.MISSING_PREFIX), missing), F.concat(missing, F.lit(" is missing"))),
        (F.col("ts").isNull(), F.lit(C.BAD_TIMESTAMP),
         F.concat(F.lit(f"cannot read as {spec.time_format}: "), excerpt(F.col("_s_ts")))),
        (F.col("event_date") < F.lit(window_start), F.lit(C.TS_BEFORE_WINDOW),
         F.concat(F.lit("event date "), F.col("event_date").cast("string"), F.lit(f" before window start {window_start}"))),
        (F.col("event_date") > F.lit(window_end), F.lit(C.TS_AFTER_WINDOW),
         F.concat(F.lit("event date "), F.col("event_date").cast("string"), F.lit(f" after window end {window_end}"))),
        (F.col("event_type").isNull(), F.lit(C.UNKNOWN_EVENT_TYPE),
         F.concat(F.lit("event type not in the source's event_types: "), excerpt(F.col("_s_event_type")))),
        (raw_price.isNotNull() & F.col("price").isNull(), F.lit(C.BAD_PRICE),
         F.concat(F.lit("price is not a number: "), excerpt(raw_price))),
        (F.col("price") < 0, F.lit(C.NEGATIVE_PRICE), F.concat(F.lit("price "), raw_price)),
    ]
    # A flat coalesce of guarded codes (first match wins) stays small enough for Spark's code
    # generation; a nested CASE chain of this size falls back to interpretation.
    reason = F.coalesce(*[F.when(condition, code) for condition, code, _ in checks])
    detail = F.coalesce(*[F.when(condition, text) for condition, _, text in checks])
    # The detail is evaluated for quarantined rows only (most rows are valid).
    return df.withColumn("reason", reason).withColumn(
        "detail", F.when(F.col("reason").isNotNull(), detail)
    )


@contextlib.contextmanager
def keyed_pseudonyms(spark: SparkSession, key: bytes | None) -> Iterator[Callable[[Column], Column] | None]:
    """Within the block, a function that gives a column's HMAC-SHA256 under ``key`` (RFC 2104,
    lower-case hex); None when ``key`` is None (pseudonymisation off).

    Spark has no keyed hash built in, and any expression of the key (even its padded forms)
    would be a literal in every query plan, the UI and the event logs. So the key travels in a
    broadcast, read by a vectorised UDF: the plan names only the function and the broadcast's
    id. The broadcast is destroyed when the block ends, which removes its driver-side file;
    everything computed with the function must be materialised inside the block.
    """
    if key is None:
        yield None
        return
    secret = spark.sparkContext.broadcast(key)
    try:
        yield _hmac_sha256_hex_udf(secret)
    finally:
        secret.destroy()


def _hmac_sha256_hex_udf(secret: Broadcast) -> Callable[[Column], Column]:
    @F.pandas_udf(T.StringType())
    def hmac_sha256_hex(values: pd.Series) -> pd.Series:
        key = secret.value
        return values.map(lambda v: hmac.new(key, v.encode("utf-8"), hashlib.sha256).hexdigest(),
                          na_action="ignore")

    return hmac_sha256_hex


def with_pseudonymised_user(
    df: DataFrame, *, pseudonym: Callable[[Column], Column] | None, spec: SourceSpec
) -> DataFrame:
    """Replace ``_s_user_id`` by its keyed HMAC and re-serialise ``raw_record`` without the raw id.

    A record whose user id cannot be parsed is replaced by a redaction marker with its hash, so
    that no raw user id reaches any table. No-op when ``pseudonym`` is None.
    """
    if pseudonym is None:
        return df
    # Computed once as a column (a Python UDF is evaluated for every row wherever it appears).
    df = df.withColumn("_pseudonym", pseudonym(F.col("_s_user_id")))
    user_raw_name = spec.fields["user_id"]
    raw_cols = [
        F.col("_pseudonym") if name == user_raw_name else F.col("_raw").getField(name)
        for name in spec.raw_columns
    ]
    if spec.format == "json":
        rebuilt = F.to_json(F.struct(*[c.alias(n) for c, n in zip(raw_cols, spec.raw_columns)]))
    else:
        rebuilt = F.concat_ws(spec.delimiter, *[F.coalesce(c, F.lit("")) for c in raw_cols])
    redacted = F.concat(
        F.lit("<redacted: unparseable record under pseudonymisation, sha256="),
        F.sha2(F.col("raw_record"), 256),
        F.lit(">"),
    )
    can_rebuild = F.col("_raw._corrupt_record").isNull() & F.col("_s_user_id").isNotNull()
    quarantined = F.col("reason").isNotNull()  # valid rows do not keep their raw record
    return df.withColumn(
        "raw_record", F.when(quarantined, F.when(can_rebuild, rebuilt).otherwise(redacted))
    ).withColumn("_s_user_id", F.col("_pseudonym")).drop("_pseudonym")


def with_event_id(df: DataFrame) -> DataFrame:
    """Deterministic ``event_id`` for valid rows (null for quarantined ones): 128 bits of
    SHA-256 over the canonical fields and source.

    Two rows with the same canonical content are the same event (exact duplicates).
    """
    parts = [
        F.col("source"),
        F.col("user_id"),
        F.unix_micros("ts").cast("string"),
        F.col("event_type"),
        F.col("item_id"),
        F.col("category_id"),
        F.col("category_path"),
        F.col("brand"),
        F.col("price").cast("string"),
        F.col("source_session_id"),
    ]
    text = F.concat_ws(_SEP, *[F.coalesce(p, F.lit(_NULL)) for p in parts])
    return df.withColumn("event_id", F.when(F.col("reason").isNull(), F.substring(F.sha2(text, 256), 1, 32)))


def classify(
    lines: DataFrame,
    *,
    spec: SourceSpec,
    window_start: dt.date,
    window_end: dt.date,
    max_field_chars: int,
    max_record_chars: int,
    pseudonym: Callable[[Column], Column] | None,
) -> DataFrame:
    """Every input line with its typed canonical fields, ``reason`` and ``detail``; user ids
    replaced by ``pseudonym`` of them when given (see ``keyed_pseudonyms``)."""
    return (
        lines.transform(filter_header_lines, spec=spec)
        .transform(with_raw_fields, spec=spec)
        .transform(with_canonical_fields, spec=spec)
        .transform(
            with_quarantine_reason,
            spec=spec,
            window_start=window_start,
            window_end=window_end,
            max_field_chars=max_field_chars,
            max_record_chars=max_record_chars,
        )
        .transform(with_pseudonymised_user, pseudonym=pseudonym, spec=spec)
        .transform(select_classified, source=spec.name)
        .transform(with_event_id)
    )


def select_classified(df: DataFrame, *, source: str) -> DataFrame:
    """The narrow result of ``classify``: typed canonical fields, reason and detail, and the raw
    record and file for quarantined rows only (keeping them for valid rows would only cost)."""
    quarantined = F.col("reason").isNotNull()
    return df.select(
        "reason",
        "detail",
        # Stored as valid UTF-8 (invalid bytes become U+FFFD) so every Parquet reader can open it.
        F.when(quarantined, F.make_valid_utf8("raw_record")).alias("raw_record"),
        F.when(quarantined, F.col("source_file")).alias("source_file"),
        F.col("_s_user_id").alias("user_id"),
        "ts",
        "event_type",
        *[F.col(f"_s_{name}").alias(name) for name in ("item_id", "category_id", "category_path", "brand")],
        "price",
        F.col("_s_source_session_id").alias("source_session_id"),
        F.lit(source).alias("source"),
        "event_date",
    )


def select_events(classified: DataFrame) -> DataFrame:
    """Valid rows in the ``events`` schema (duplicates still present)."""
    return classified.filter(F.col("reason").isNull()).select(*[f.name for f in schemas.EVENTS.fields])


def with_duplicate_flag(events: DataFrame, *, partitions: int) -> DataFrame:
    """Add ``is_duplicate``: true for every copy of an event after its first.

    Hash-partitioned by (user_id, event_date) and ordered by (source, event_date, user_id, ts, event_id):
    copies of an event (same ts, so same day) are then adjacent, and the order leads with the
    table's partition columns, so one sort serves the de-duplication, the write (which must
    group rows by partition) and the files' clustering by user (for later per-user stages and
    analysts' user filters). Ordered by user first, the write sorted everything again.
    """
    by_user_day = Window.partitionBy(C.SOURCE, C.EVENT_DATE, C.USER_ID).orderBy(C.TS, C.EVENT_ID)
    # Hashed by (user, day), which the window's (source, event_date, user_id) clustering allows:
    # a heavy user's days spread over tasks instead of loading one (bench/run.py's skew run).
    return (
        events.repartition(partitions, C.USER_ID, C.EVENT_DATE)
        .withColumn("is_duplicate", F.coalesce(F.lag(C.EVENT_ID).over(by_user_day) == F.col(C.EVENT_ID), F.lit(False)))
    )


def select_quarantine(
    classified: DataFrame, *, run_id: str, run_date: dt.date, stage_name: str = C.STAGE_INGEST
) -> DataFrame:
    return classified.filter(F.col("reason").isNotNull()).select(
        F.lit(run_id).alias("run_id"),
        F.lit(stage_name).alias("stage"),
        F.col("source"),
        F.col("reason"),
        F.col("detail"),
        F.col("raw_record"),
        F.col("source_file"),
        F.col("user_id"),
        F.lit(None).cast("string").alias("event_id"),
        F.col("ts").alias("event_ts"),
        F.lit(run_date).alias("run_date"),
    )


# --------------------------------------------------------------------------- the run


def resolve_inputs(spark: SparkSession, cfg: Config, spec: SourceSpec, window_start: dt.date,
                   window_end: dt.date, input_path: str | None) -> list[str]:
    """The files to read: ``input_path`` as given, else each day's landing folder of the window."""
    if input_path:
        filesystem, path = tables.hadoop_filesystem(spark, input_path)
        matches = filesystem.globStatus(path)  # None or empty: nothing there (a glob may match several)
        if matches is None or len(matches) == 0:
            raise FileNotFoundError(f"--input {input_path}: no such file or folder")
        return [input_path]
    days = (window_end - window_start).days + 1
    paths = [cfg.landing_path(spec.name, window_start + dt.timedelta(d)) for d in range(days)]
    found = []
    for folder in paths:
        filesystem, path = tables.hadoop_filesystem(spark, folder)
        if filesystem.exists(path):
            found.append(folder)
        else:
            raise FileNotFoundError(
                f"no landing data for source {spec.name!r} at {folder} "
                f"(generate or land the day's files first, or pass --input)"
            )
    return found


def ingest(
    spark: SparkSession,
    cfg: Config,
    spec: SourceSpec,
    *,
    window_start: dt.date,
    window_end: dt.date,
    input_path: str | None = None,
) -> IngestResult:
    """Ingest one source for the window [window_start, window_end]; see the module docstring."""
    if window_end < window_start:
        raise ConfigError(f"--to {window_end} is before --from {window_start}")
    run_id = f"ingest-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    started_at = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    key = cfg.pseudonym_key()
    inputs = resolve_inputs(spark, cfg, spec, window_start, window_end, input_path)
    log.info("[ingest] run %s source=%s window=%s..%s inputs=%s", run_id, spec.name, window_start, window_end, inputs)

    with stage("ingest: read and classify") as info, keyed_pseudonyms(spark, key) as pseudonym:
        classified = classify(
            read_raw_lines(spark, inputs, spec.file_glob if input_path is None else "*"),
            spec=spec,
            window_start=window_start,
            window_end=window_end,
            max_field_chars=cfg.ingest.max_field_chars,
            max_record_chars=cfg.ingest.max_record_chars,
            pseudonym=pseudonym,
        )
        # Materialise the narrow classification once as staging Parquet (cheaper to build than
        # Spark's columnar cache); the counts, the quarantine and the events all read it. The
        # pseudonyms are computed here, while the key's broadcast lives.
        staging = join_path(cfg.lake.root, "_staging", run_id)
        try:
            classified.write.mode("overwrite").parquet(staging)
        except BaseException:
            _delete_path(spark, staging)  # a failed run leaves no partial staging copy
            raise
        classified = spark.read.parquet(staging)
        counts = {
            (r["reason"] or ""): r["n"]
            for r in classified.groupBy("reason").agg(F.count(F.lit(1)).alias("n")).collect()
        }
        rows_read = sum(counts.values())
        by_reason = {k: v for k, v in sorted(counts.items()) if k}
        rows_quarantined = sum(by_reason.values())
        info.update(rows_read=rows_read, quarantined=rows_quarantined)

    where_window = (
        f"source = '{spec.name}' AND event_date >= '{window_start}' AND event_date <= '{window_end}'"
    )
    where_quarantine = (
        f"stage = '{C.STAGE_INGEST}' AND source = '{spec.name}' "
        f"AND run_date >= '{window_start}' AND run_date <= '{window_end}'"
    )
    try:
        with stage("ingest: write quarantine") as info:
            quarantine = select_quarantine(classified, run_id=run_id, run_date=window_start)
            quarantine_written = tables.replace_where_unless_noop(
                quarantine, cfg, C.EVENTS_QUARANTINE, where_quarantine, partition_by=[C.RUN_DATE],
                adds_rows=rows_quarantined > 0,
            )
            info.update(rows=quarantine_written)
        if quarantine_written != rows_quarantined:
            raise RuntimeError(
                f"quarantine accounting: {rows_quarantined} rows classified bad but "
                f"{quarantine_written} written to {C.EVENTS_QUARANTINE}"
            )

        # Lines the source itself excludes (cancellations) are not bad input: the share is of
        # the rest.
        excluded = sum(n for reason, n in by_reason.items() if reason.startswith(C.EXCLUDED_PREFIX))
        defects, considered = rows_quarantined - excluded, rows_read - excluded
        share = defects / considered if considered else 0.0
        threshold = cfg.ingest.quarantine_threshold
        if share > threshold:
            message = (
                f"{defects:,} of {considered:,} rows ({share:.1%}) quarantined"
                f"{f' (besides {excluded:,} excluded by the source)' if excluded else ''}, over "
                f"ingest.quarantine_threshold={threshold:.1%}; see {cfg.lake.database}."
                f"{C.EVENTS_QUARANTINE} where run_id = '{run_id}' (by reason: {by_reason}). "
                f"Events for {window_start}..{window_end} were not written."
            )
            result = IngestResult(run_id, spec.name, window_start, window_end, rows_read, 0,
                                  rows_quarantined, 0, rows_read - rows_quarantined, by_reason,
                                  "failed", message)
            _record_run(spark, cfg, result, inputs, started_at)
            raise QuarantineThresholdExceeded(message)

        with stage("ingest: deduplicate and write events") as info:
            # Copies are counted while the write runs, independently of the rows it commits
            # (read back from the table): the balance below compares the two.
            copies = Observation("duplicates")
            flagged = with_duplicate_flag(select_events(classified), partitions=cfg.ingest.files_per_day)
            rows_written = tables.replace_where(
                flagged.observe(copies, F.sum(F.col("is_duplicate").cast("long")).alias("n"))
                .filter(~F.col("is_duplicate"))
                .drop("is_duplicate"),
                cfg, C.EVENTS, where_window, partition_by=[C.SOURCE, C.EVENT_DATE],
            )
            duplicates = copies.get.get("n") or 0
            info.update(rows=rows_written, duplicates=duplicates)
    finally:
        _delete_path(spark, staging)

    result = IngestResult(run_id, spec.name, window_start, window_end, rows_read, rows_written,
                          rows_quarantined, duplicates, 0, by_reason, "ok", "")
    if not result.balanced:
        message = (
            f"row accounting does not balance: read {rows_read} != written {rows_written} + "
            f"quarantined {rows_quarantined} + duplicates {duplicates}"
        )
        result = dataclasses.replace(result, status="failed", message=message)
        _record_run(spark, cfg, result, inputs, started_at)
        raise RuntimeError(message)
    _record_run(spark, cfg, result, inputs, started_at)
    return result


def _delete_path(spark: SparkSession, path: str) -> None:
    filesystem, hadoop_path = tables.hadoop_filesystem(spark, path)
    filesystem.delete(hadoop_path, True)


def _record_run(spark: SparkSession, cfg: Config, result: IngestResult, inputs: list[str],
                started_at: dt.datetime) -> None:
    row = (
        result.run_id, result.source, result.window_start, result.window_end, inputs, started_at,
        dt.datetime.now(dt.timezone.utc).replace(tzinfo=None), result.rows_read, result.rows_written,
        result.rows_quarantined, result.duplicates_dropped, result.rows_held_back,
        result.quarantined_by_reason, result.status, result.message or None,
    )
    tables.append(spark.createDataFrame([row], schemas.INGEST_RUNS), cfg, C.INGEST_RUNS)
