"""Reading, writing and registering the lake's Delta tables.

Every write is addressed by a predicate over partition columns (Delta ``replaceWhere``), so a
job for date D overwrites exactly D and a rerun leaves identical contents. A killed write leaves
the previous table version readable: Delta commits atomically.

Data contracts: a table is created with its ``schemas.TABLES`` schema's NOT NULL columns and its
``schemas.CONSTRAINTS`` CHECK constraints, so Delta refuses (whole, committing nothing) a write or
MERGE that breaks them, whoever writes. ``register`` adds what a table created before lacks.
"""
from __future__ import annotations

import re
import time
from typing import Sequence

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
import pyspark.sql.types as T

from seqlake import constants as C
from seqlake import schemas
from seqlake.config import Config
from seqlake.progress import log

# The columns whose per-file min/max Delta records (delta.dataSkippingStatsColumns), for the
# tables written at full event volume. Delta's default, the first 32 columns, cost ~40% of
# each write there (10M session_events rows: 24.5 s -> 15.0 s) for columns no file can be
# skipped on: item ids, event types and hashed ids spread over every file. user_id stays:
# files are sorted and Z-ordered by it, and analysts filter by it. Set when a table is created;
# docs/operations.md ("Lake housekeeping") shows the ALTER TABLE for a table created before.
STATS_COLUMNS: dict[str, tuple[str, ...]] = {
    C.EVENTS: (C.USER_ID, C.TS),
    C.SESSION_EVENTS: (C.USER_ID, C.TS),
    C.SESSIONS: (C.USER_ID, "session_start"),
}


class ContractViolation(ValueError):
    """Rows break a table's data contract (a CHECK constraint or a NOT NULL column)."""


def exists(spark: SparkSession, cfg: Config, table: str) -> bool:
    return DeltaTable.isDeltaTable(spark, cfg.table_path(table))


def has_rows(spark: SparkSession, cfg: Config, table: str, predicate: str) -> bool:
    """Whether ``table`` exists and holds a row matching the SQL ``predicate``."""
    return exists(spark, cfg, table) and bool(read(spark, cfg, table).filter(predicate).limit(1).count())


def hadoop_filesystem(spark: SparkSession, path: str):
    """(Hadoop FileSystem, Path) for ``path``: local, s3a://, hdfs:// ... alike."""
    hadoop_path = spark.sparkContext._jvm.org.apache.hadoop.fs.Path(path)
    return hadoop_path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()), hadoop_path


def read(spark: SparkSession, cfg: Config, table: str, schema: T.StructType | None = None) -> DataFrame:
    """The table's current version; an empty DataFrame of ``schema`` when it does not exist yet."""
    if not exists(spark, cfg, table):
        if schema is None:
            raise ValueError(f"table {table!r} does not exist at {cfg.table_path(table)}")
        return spark.createDataFrame([], schema)
    return spark.read.format("delta").load(cfg.table_path(table))


def replace_where(
    df: DataFrame,
    cfg: Config,
    table: str,
    predicate: str,
    partition_by: Sequence[str],
    *,
    conflict_retries: int = 0,
) -> int:
    """Atomically replace the rows matching ``predicate`` with ``df``; return how many rows now match.

    Delta checks that every written row matches ``predicate``, so a bug cannot spill into
    another date's partition. The returned count is read back from the committed table (Delta
    answers it from file statistics), an independent check on what was written.

    ``conflict_retries``: for a table whose partitions do not separate the runs that write it
    (``run_metrics``, partitioned by stage only), a Delta conflict with a concurrent run that
    added files to the same partition is retried on the new snapshot. Safe because the write
    replaces only the rows of ``predicate``, which the other run did not write.
    """
    create_if_absent(df, cfg, table, partition_by)
    for attempt in range(conflict_retries + 1):
        try:
            (
                df.write.format("delta")
                .mode("overwrite")
                .option("replaceWhere", predicate)
                .partitionBy(*partition_by)
                .save(cfg.table_path(table))
            )
            break
        except Exception as exc:
            _raise_if_contract_violation(exc, table)
            conflict = delta_conflict(exc)
            if conflict is None or attempt == conflict_retries:
                raise
            log.warning("%s: %s; retrying on the new snapshot (%d of %d)", table, conflict, attempt + 1,
                        conflict_retries)
            time.sleep(0.5 * (attempt + 1))
    return read(df.sparkSession, cfg, table).filter(predicate).count()


def replace_where_unless_noop(
    df: DataFrame,
    cfg: Config,
    table: str,
    predicate: str,
    partition_by: Sequence[str],
    *,
    adds_rows: bool,
) -> int:
    """``replace_where``, skipping the commit (and the pass over ``df``) when ``adds_rows`` is
    false and the existing table holds nothing under ``predicate`` to clear. Creates the table
    on first use either way, so analysts can always query it."""
    if not adds_rows and exists(df.sparkSession, cfg, table) and not has_rows(df.sparkSession, cfg, table, predicate):
        return 0
    return replace_where(df, cfg, table, predicate, partition_by)


def append(df: DataFrame, cfg: Config, table: str, partition_by: Sequence[str] = ()) -> None:
    create_if_absent(df, cfg, table, partition_by)
    try:
        df.write.format("delta").mode("append").partitionBy(*partition_by).save(cfg.table_path(table))
    except Exception as exc:
        _raise_if_contract_violation(exc, table)
        raise


def create_if_absent(df: DataFrame, cfg: Config, table: str, partition_by: Sequence[str]) -> None:
    """Create ``table`` (empty) for ``df``'s first write, in one commit with its contract and properties.

    A write that creates a table marks every column nullable; created first, the table keeps NOT
    NULL where ``schemas.TABLES`` declares it. Columns and types are ``df``'s, as a creating write
    would make them. The properties are set here only: a property change on every write would be a
    metadata commit that fails concurrent writers.
    """
    spark = df.sparkSession
    if exists(spark, cfg, table):
        return
    schema = table_schema(table, df.schema)
    properties = {f"delta.constraints.{name}": expression for name, expression in contract(table, schema).items()}
    if table in STATS_COLUMNS:
        properties["delta.dataSkippingStatsColumns"] = ",".join(STATS_COLUMNS[table])
    builder = DeltaTable.createIfNotExists(spark).location(cfg.table_path(table)).addColumns(schema)
    if partition_by:
        builder = builder.partitionedBy(*partition_by)
    for key, value in properties.items():
        builder = builder.property(key, value)
    builder.execute()


def table_schema(table: str, schema: T.StructType) -> T.StructType:
    """``schema`` as ``table`` stores it: a top-level column is NOT NULL where ``schemas.TABLES``
    declares it non-nullable, else nullable; inside a column everything is nullable, as a creating
    write makes it (Delta does not support NOT NULL within arrays and maps)."""
    declared = schemas.TABLES.get(table)
    required = {f.name for f in declared.fields if not f.nullable} if declared is not None else set()
    return T.StructType([
        T.StructField(f.name, _nullable_inside(f.dataType), f.name not in required, f.metadata) for f in schema.fields
    ])


def _nullable_inside(dtype: T.DataType) -> T.DataType:
    if isinstance(dtype, T.ArrayType):
        return T.ArrayType(_nullable_inside(dtype.elementType), True)
    if isinstance(dtype, T.MapType):
        return T.MapType(_nullable_inside(dtype.keyType), _nullable_inside(dtype.valueType), True)
    if isinstance(dtype, T.StructType):
        return T.StructType([T.StructField(f.name, _nullable_inside(f.dataType), True, f.metadata)
                             for f in dtype.fields])
    return dtype


NOT_NULL = "not_null"


def contract(table: str, schema: T.StructType) -> dict[str, str]:
    """The CHECK constraints ``table`` must carry when its columns are ``schema``:
    ``schemas.CONSTRAINTS`` and, for a table whose columns a DataFrame write left nullable (Delta
    cannot make an existing column NOT NULL), ``not_null`` over the columns ``schemas.TABLES``
    declares non-nullable. None for a table without a declared schema, or not holding its columns."""
    declared = schemas.TABLES.get(table)
    if declared is None or not set(declared.fieldNames()) <= set(schema.fieldNames()):
        return {}
    checks = dict(schemas.CONSTRAINTS.get(table, {}))
    nullable = {f.name for f in schema.fields if f.nullable}
    relaxed = [f.name for f in declared.fields if not f.nullable and f.name in nullable]
    if relaxed:
        checks[NOT_NULL] = " AND ".join(f"`{name}` IS NOT NULL" for name in relaxed)
    return checks


def apply_contract(spark: SparkSession, cfg: Config, table: str) -> list[str]:
    """Give the existing ``table`` the constraints of ``contract`` it lacks, or holds with another
    expression; return their names. One ALTER TABLE per constraint, each a commit that reads the
    whole table: Delta refuses a constraint that rows already break, and so does this, naming the
    table and the constraint. Another job's commit meanwhile leaves the rest to a later call."""
    declared = schemas.TABLES.get(table)
    if declared is None:
        return []
    path = cfg.table_path(table)
    delta = DeltaTable.forPath(spark, path)
    schema = delta.toDF().schema
    missing = [name for name in declared.fieldNames() if name not in schema.fieldNames()]
    if missing:
        log.warning("%s at %s lacks columns %s of its schema: data contract not applied", table, path, missing)
        return []
    wanted = contract(table, schema)
    properties = delta.detail().first()["properties"]
    target = "delta.`{}`".format(path.replace("`", "``"))
    added = []
    for name, expression in wanted.items():
        held = properties.get(f"delta.constraints.{name}")
        if held is not None and _same_sql(held, expression):
            continue
        try:
            if held is not None:
                spark.sql(f"ALTER TABLE {target} DROP CONSTRAINT {name}")
            spark.sql(f"ALTER TABLE {target} ADD CONSTRAINT {name} CHECK ({expression})")
        except Exception as exc:  # noqa: BLE001 - re-raised below unless a Delta conflict
            if "DELTA_CONSTRAINT_ALREADY_EXISTS" in str(exc):
                continue  # a command running beside this one added it first
            conflict = delta_conflict(exc)
            if conflict is not None:
                log.warning("data contract of %s: constraint %s left for a later registration: %s", table, name,
                            conflict)
                return added
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            reason = next((line for line in lines if "DELTA_NEW_CHECK_CONSTRAINT_VIOLATION" in line),
                          lines[0] if lines else type(exc).__name__)
            raise ContractViolation(
                f"table {table}: cannot add constraint {name} CHECK ({expression}): {reason[:400]}"
            ) from exc
        added.append(name)
    if added:
        log.info("data contract of %s: added %s", table, ", ".join(added))
    return added


def _same_sql(held: str, wanted: str) -> bool:
    """Delta stores a constraint's expression re-spaced (``IN ( 'a' , 'b' )``): compare without
    whitespace, else every registration would drop and re-add it (two commits, a full scan)."""
    return re.sub(r"\s+", "", held).lower() == re.sub(r"\s+", "", wanted).lower()


# Delta's error classes for a written row that breaks a CHECK constraint or a NOT NULL column.
_VIOLATION_MARKERS = ("DELTA_VIOLATE_CONSTRAINT_WITH_VALUES", "DELTA_NOT_NULL_CONSTRAINT_VIOLATED")


def _raise_if_contract_violation(exc: BaseException, table: str) -> None:
    """Raise ``ContractViolation`` naming ``table`` and the constraint (with the row's values
    Delta gives) if ``exc`` is Delta refusing a write for its data contract."""
    lines = [line.strip() for line in str(exc).splitlines()]
    for i, line in enumerate(lines):
        if any(marker in line for marker in _VIOLATION_MARKERS):
            values = []
            for value in lines[i + 1:]:
                if not value.startswith("- "):
                    break
                values.append(value[2:])
            message = line[line.index("[DELTA_"):] if "[DELTA_" in line else line
            detail = f" ({'; '.join(values)})" if values else ""
            raise ContractViolation(f"write to {table} refused by its data contract: {message}{detail}"[:1000]) from exc


def register(spark: SparkSession, cfg: Config, tables: Sequence[str], *, comments: bool = True,
             contracts: bool = True) -> list[str]:
    """Register existing Delta tables as ``<database>.<table>`` so SQL can name them; with
    ``comments``, give a newly registered table its column comments; with ``contracts``, give each
    table the constraints of its data contract it lacks (``apply_contract``: a table created by an
    older version, or by a write outside this module). Each constraint added is a metadata commit,
    which fails a job writing the same table at that moment (once per table and constraint)."""
    db = cfg.lake.database
    spark.sql(f"CREATE DATABASE IF NOT EXISTS {db}")
    registered = []
    for table in tables:
        if not exists(spark, cfg, table):
            continue
        if contracts:
            apply_contract(spark, cfg, table)
        location = cfg.table_path(table).replace("'", "\\'")
        if not spark.catalog.tableExists(f"{db}.{table}"):
            spark.sql(f"CREATE TABLE {db}.{table} USING DELTA LOCATION '{location}'")
            if comments:
                _apply_comments(spark, cfg, table)  # once, when the catalog first sees the table
        registered.append(f"{db}.{table}")
    return registered


def _apply_comments(spark: SparkSession, cfg: Config, table: str) -> None:
    """Give the table's columns the comments ``schemas.COMMENTS`` holds for them, where they lack
    one (each is a Delta metadata commit, so only at registration; tables written with
    ``schemas._c`` fields carry their comments from the first write)."""
    from seqlake import schemas

    wanted = getattr(schemas, "COMMENTS", {}).get(table)
    if not wanted:
        return
    current = {f.name: f.metadata.get("comment") for f in read(spark, cfg, table).schema.fields}
    target = f"delta.`{cfg.table_path(table)}`"
    for column, comment in wanted.items():
        if column in current and current[column] != comment:
            text = comment.replace("\\", "\\\\").replace("'", "\\'")
            try:
                spark.sql(f"ALTER TABLE {target} ALTER COLUMN `{column}` COMMENT '{text}'")
            except Exception as exc:  # noqa: BLE001 - only Delta's concurrency errors are expected
                # Another job committed to the table meanwhile (a backfill writing two days):
                # comments are documentation, so the next registration adds them, not this job.
                conflict = delta_conflict(exc)
                if conflict is None:
                    raise
                log.warning("column comments of %s left for a later registration: %s", table, conflict)
                return


# Error classes of Delta's optimistic concurrency control (a commit refused because another
# transaction changed what this one read).
_CONFLICT_MARKERS = ("DELTA_CONCURRENT_", "DELTA_METADATA_CHANGED", "DELTA_PROTOCOL_CHANGED",
                     "ConcurrentAppendException", "ConcurrentDeleteReadException",
                     "ConcurrentDeleteDeleteException", "ConcurrentTransactionException",
                     "ConcurrentWriteException", "MetadataChangedException", "ProtocolChangedException")


def delta_conflict(exc: BaseException) -> str | None:
    """The line of ``exc`` that names a Delta commit conflict, else None."""
    from delta import exceptions as delta_exceptions

    kinds = tuple(getattr(delta_exceptions, name) for name in delta_exceptions.__all__)
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    # Through Py4J the Delta error is a line inside a Java stack trace: name that line.
    named = [line for line in lines if any(marker in line for marker in _CONFLICT_MARKERS)]
    if isinstance(exc, kinds) or named:
        return (named or lines or [type(exc).__name__])[0].lstrip(": ")[:400]
    return None
