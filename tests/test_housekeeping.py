"""`seqlake housekeeping`: OPTIMIZE compacts only the recent partitions, Z-orders, keeps every
row; VACUUM honours the retention; bad settings are refused before Spark."""
from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path

import pytest
from delta.tables import DeltaTable

from seqlake import housekeeping, schemas, tables
from seqlake.config import ConfigError
from seqlake.cli import main as cli_main

from conftest import make_config

DAYS = [dt.date(2024, 1, 1) + dt.timedelta(days=d) for d in range(4)]


def event_rows(day: dt.date, batch: int) -> list[tuple]:
    ts = dt.datetime.combine(day, dt.time(12)) + dt.timedelta(minutes=batch)
    return [(f"e{day:%d}{batch}{u}", f"u{u}", ts, "view", f"i{u}", "c1", "a.b", "b1", 1.0, None, "generator", day)
            for u in range(5)]


def files_per_day(spark, cfg) -> dict[dt.date, int]:
    files = tables.read(spark, cfg, "events").inputFiles()
    counts: dict[dt.date, int] = {}
    for f in files:
        day = dt.date.fromisoformat(f.split("event_date=")[1][:10])
        counts[day] = counts.get(day, 0) + 1
    return counts


def test_optimize_compacts_the_recent_days_only_and_keeps_every_row(spark, tmp_path):
    cfg = make_config(tmp_path, "housekeeping.recent_days=2", "housekeeping.tables=[events]",
                      "housekeeping.zorder_tables=[events]")
    # Three appends per day: three small files in every day's partition.
    for batch in range(3):
        for day in DAYS:
            tables.append(spark.createDataFrame(event_rows(day, batch), schemas.EVENTS).coalesce(1), cfg, "events",
                          partition_by=["source", "event_date"])
    before = tables.read(spark, cfg, "events").orderBy("event_id").collect()
    assert files_per_day(spark, cfg) == {d: 3 for d in DAYS}

    [result] = housekeeping.housekeep(spark, cfg, vacuum=False, day=DAYS[-1])

    # recent_days=2 ending with the last day: its partition and the one before are compacted.
    assert files_per_day(spark, cfg) == {DAYS[0]: 3, DAYS[1]: 3, DAYS[2]: 1, DAYS[3]: 1}
    assert (result.files_removed, result.files_added, result.files_after) == (6, 2, 8)
    assert result.zordered and result.optimized_where == "event_date > '2024-01-02' AND event_date <= '2024-01-04'"
    assert tables.read(spark, cfg, "events").orderBy("event_id").collect() == before
    last = DeltaTable.forPath(spark, cfg.table_path("events")).history(1).first()
    assert last["operation"] == "OPTIMIZE" and "user_id" in last["operationParameters"]["zOrderBy"]


def test_vacuum_deletes_only_files_older_than_the_retention(spark, tmp_path):
    cfg = make_config(tmp_path, "housekeeping.tables=[events]", "housekeeping.vacuum_retention_hours=200")
    tables.append(spark.createDataFrame(event_rows(DAYS[0], 0), schemas.EVENTS), cfg, "events",
                  partition_by=["source", "event_date"])
    partition = Path(cfg.table_path("events")) / "source=generator" / f"event_date={DAYS[0]}"
    # Files no version references (a killed writer's leftovers): one 300 h old, one fresh.
    stale, fresh = partition / "part-stale.snappy.parquet", partition / "part-fresh.snappy.parquet"
    for f in (stale, fresh):
        f.write_bytes(b"not referenced")
    old = time.time() - 300 * 3600
    os.utime(stale, (old, old))

    [result] = housekeeping.housekeep(spark, cfg, optimize=False)

    assert not stale.exists() and fresh.exists()
    assert result.files_vacuumed == 1 and result.optimized_where is None
    assert tables.read(spark, cfg, "events").count() == 5


@pytest.mark.parametrize("override, message", [
    ("housekeeping.vacuum_retention_hours=24", "housekeeping.vacuum_retention_hours: expected an integer >= 168"),
    ("housekeeping.tables=[events,ingest_runs]", "housekeeping.tables: expected names among"),
    ("housekeeping.zorder_tables=[score_runs]", "housekeeping.zorder_tables: expected names among"),
    ("housekeeping.recent_days=-1", "housekeeping.recent_days: expected an integer >= 0"),
])
def test_bad_housekeeping_settings_name_the_key(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        make_config(tmp_path, "housekeeping.tables=[events]", override)


def test_cli_refuses_unknown_tables_before_spark(tmp_path, capsys):
    code = cli_main(["--set", f"lake.root={tmp_path}", "housekeeping", "--tables", "events,nope"])
    assert code == 2
    assert "--tables: unknown ['nope']" in capsys.readouterr().err
    assert not (tmp_path / "events").exists()


def test_stale_staging_folders_of_killed_ingests_are_removed_fresh_ones_kept(spark, tmp_path):
    cfg = make_config(tmp_path, "housekeeping.vacuum_retention_hours=200")
    staging = Path(cfg.lake.root) / "_staging"
    stale, fresh = staging / "ingest-20240101T000000-dead", staging / "ingest-20240102T000000-live"
    for folder in (stale, fresh):
        folder.mkdir(parents=True)
        (folder / "part-0.parquet").write_bytes(b"x")
    old = time.time() - 300 * 3600
    os.utime(stale, (old, old))

    assert housekeeping.remove_stale_staging(spark, cfg) == [stale.name]
    assert not stale.exists() and fresh.exists()
