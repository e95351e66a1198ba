"""Delta housekeeping for a lake that lives for years: OPTIMIZE (compaction, Z-order) and VACUUM.

Why: every nightly replaceWhere and MERGE adds files and leaves the replaced ones on storage.
Small files slow every later scan (one task and one footer read per file), and replaced files
cost storage until VACUUM deletes them. Trade-offs (docs/operations.md, "Lake housekeeping"):

- OPTIMIZE rewrites the files of the partitions it touches: about one read and one write of
  them. ``housekeeping.recent_days`` limits it to the latest days of date-partitioned tables, so
  its cost grows with a day's data, not with all history; 0 compacts whole tables.
- Z-order by user_id (``housekeeping.zorder_tables``) sorts those rows along a space-filling
  curve so a user's rows sit in few files and ``WHERE user_id = ...`` skips the rest by file
  statistics. It costs a shuffle on top of the compaction, so only tables read by user get it.
- VACUUM deletes files no longer referenced by versions younger than
  ``housekeeping.vacuum_retention_hours``. Time travel to older versions stops working, and a
  reader still using an older snapshot's files (a long training run reading a snapshot's file
  list) would fail, so the retention must exceed the longest job: Delta's default and our
  minimum is 168 hours (7 days).

Both are ordinary Delta commits: a concurrent writer may conflict with OPTIMIZE (Delta retries
or fails it cleanly; rerun the command), and a killed run leaves the table readable.
"""
from __future__ import annotations

import dataclasses
import datetime as dt

import pyspark.sql.types as T
from delta.tables import DeltaTable
from pyspark.sql import SparkSession

from seqlake import tables
from seqlake.config import Config, ConfigError, join_path
from seqlake.progress import log, stage


@dataclasses.dataclass(frozen=True)
class TableHousekeeping:
    table: str
    optimized_where: str | None  # the partition predicate OPTIMIZE ran on ("" = whole table)
    zordered: bool
    files_removed: int  # by OPTIMIZE (compacted away)
    files_added: int
    files_vacuumed: int | None  # deleted by VACUUM (None: VACUUM not run or not reported)
    files_after: int  # data files of the current version
    version_after: int


def date_partition_column(delta: DeltaTable) -> str | None:
    """The table's date-typed partition column (event_date, score_date ...), if it has one."""
    detail = delta.detail().select("partitionColumns").first()
    types = {f.name: f.dataType for f in delta.toDF().schema.fields}
    for column in detail["partitionColumns"] or []:
        if isinstance(types.get(column), T.DateType):
            return column
    return None


def optimize_statement(path: str, *, where: str, zorder: bool) -> str:
    target = "delta.`" + path.replace("`", "``") + "`"
    return f"OPTIMIZE {target}" + (f" WHERE {where}" if where else "") + (" ZORDER BY (user_id)" if zorder else "")


def housekeep(
    spark: SparkSession,
    cfg: Config,
    *,
    table_names: tuple[str, ...] | None = None,
    optimize: bool = True,
    vacuum: bool = True,
    day: dt.date | None = None,
) -> list[TableHousekeeping]:
    """OPTIMIZE and/or VACUUM each existing table of ``table_names`` (default: the config's
    ``housekeeping.tables``); with ``housekeeping.recent_days`` N > 0, OPTIMIZE touches only the
    partitions of the N days ending with ``day`` (default: today, UTC)."""
    settings = cfg.housekeeping
    names = table_names or settings.tables
    day = day or dt.datetime.now(dt.timezone.utc).date()
    # VACUUM START/END commits then carry the number of deleted files.
    spark.conf.set("spark.databricks.delta.vacuum.logging.enabled", "true")
    results = []
    for table in names:
        if not tables.exists(spark, cfg, table):
            log.info("[housekeeping] %s: no table yet, skipped", table)
            continue
        path = cfg.table_path(table)
        delta = DeltaTable.forPath(spark, path)
        removed = added = 0
        where, zorder, vacuumed = None, False, None
        if optimize:
            date_column = date_partition_column(delta) if settings.recent_days else None
            where = (f"{date_column} > '{day - dt.timedelta(days=settings.recent_days)}' "
                     f"AND {date_column} <= '{day}'") if date_column else ""
            zorder = table in settings.zorder_tables
            with stage(f"housekeeping: optimize {table}" + (f" where {where}" if where else "")) as info:
                metrics = spark.sql(optimize_statement(path, where=where, zorder=zorder)).select("metrics").first()
                removed = int(metrics["metrics"]["numFilesRemoved"] or 0)
                added = int(metrics["metrics"]["numFilesAdded"] or 0)
                info.update(files_removed=removed, files_added=added, zorder=zorder)
        if vacuum:
            with stage(f"housekeeping: vacuum {table} (retain {settings.vacuum_retention_hours} h)") as info:
                delta.vacuum(float(settings.vacuum_retention_hours))
                end = (delta.history(3).filter("operation = 'VACUUM END'")
                       .select("operationMetrics").first())
                vacuumed = int(end[0].get("numDeletedFiles", 0)) if end else None
                info.update(files_deleted=vacuumed)
        detail = delta.detail().select("numFiles").first()
        version = delta.history(1).select("version").first()[0]
        results.append(TableHousekeeping(table, where, zorder, removed, added, vacuumed, int(detail[0]), int(version)))
    return results


def remove_stale_staging(spark: SparkSession, cfg: Config) -> list[str]:
    """Delete ``<lake.root>/_staging/<run_id>`` folders older than the VACUUM retention: what an
    ingest killed before its cleanup leaves (a finished or failed run deletes its own). No run
    lasts the retention's 7 days or more, so an older folder belongs to no live run."""
    filesystem, root = tables.hadoop_filesystem(spark, join_path(cfg.lake.root, "_staging"))
    if not filesystem.exists(root):
        return []
    cutoff_ms = (dt.datetime.now(dt.timezone.utc).timestamp() - cfg.housekeeping.vacuum_retention_hours * 3600) * 1000
    removed = []
    for status in filesystem.listStatus(root):
        if status.isDirectory() and status.getModificationTime() < cutoff_ms:
            filesystem.delete(status.getPath(), True)
            removed.append(status.getPath().getName())
    log.info("[housekeeping] stale staging folders removed: %s", len(removed))
    return removed


def validate_tables(names: tuple[str, ...], known: tuple[str, ...]) -> None:
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise ConfigError(f"--tables: unknown {unknown}; expected some of {', '.join(known)}")
