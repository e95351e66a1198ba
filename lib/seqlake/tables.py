"""Reading, writing and registering the lake's Delta tables.

Every write is addressed by a predicate over partition columns (Delta ``replaceWhere``), so a
job for date D overwrites exactly D and a rerun leaves identical contents. A killed write leaves
the previous table version readable: Delta commits atomically.
"""
from __future__ import annotations

import time
from typing import Sequence

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
import pyspark.sql.types as T

from seqlake import constants as C
from seqlake.config import Config
from seqlake.progress import log

# The columns whose per-file min/max Delta records (delta.dataSkippingStatsColumns), for the
# tables written at full event volume. Delta's default, the first 32 columns, cost ~40% of
# each write there (10M session_events rows: 24.5 s -> 15.0 s) for columns no file can be
# skipped on: item ids, event types and hashed ids spread over every file. user_id stays:
# files are sorted and Z-ordered by it, and analysts filter by it. Set when a table is created;
# README "Lake housekeeping" shows the ALTER TABLE for a table created before.
STATS_COLUMNS: dict[str, tuple[str, ...]] = {
    C.EVENTS: (C.USER_ID, C.TS),
    C.SESSION_EVENTS: (C.USER_ID, C.TS),
    C.SESSIONS: (C.USER_ID, "session_start"),
}


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
    for attempt in range(conflict_retries + 1):
        try:
            (
                df.write.format("delta")
                .options(**creation_options(df.sparkSession, cfg, table))
                .mode("overwrite")
                .option("replaceWhere", predicate)
                .partitionBy(*partition_by)
                .save(cfg.table_path(table))
            )
            break
        except Exception as exc:
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
    (
        df.write.format("delta").options(**creation_options(df.sparkSession, cfg, table))
        .mode("append").partitionBy(*partition_by).save(cfg.table_path(table))
    )


def creation_options(spark: SparkSession, cfg: Config, table: str) -> dict[str, str]:
    """Table properties for the write that creates ``table`` (none once it exists: a property
    change on every write would be a metadata commit that fails concurrent writers)."""
    columns = STATS_COLUMNS.get(table)
    if columns is None or exists(spark, cfg, table):
        return {}
    return {"delta.dataSkippingStatsColumns": ",".join(columns)}


def register(spark: SparkSession, cfg: Config, tables: Sequence[str], *, comments: bool = True) -> list[str]:
    """Register existing Delta tables as ``<database>.<table>`` so SQL can name them; with
    ``comments``, give a newly registered table its column comments."""
    db = cfg.lake.database
    spark.sql(f"CREATE DATABASE IF NOT EXISTS {db}")
    registered = []
    for table in tables:
        if not exists(spark, cfg, table):
            continue
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
