"""Sessionization: exact sessions on a hand-made lake, midnight crossing, cuts, caps, incremental = batch."""
from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

import pytest
from pyspark.testing import assertDataFrameEqual

from seqlake import constants as C
from seqlake import schemas, tables
from seqlake.sessionize import MissingPreviousDay, sessionize

from conftest import make_config

D1, D2, D3 = dt.date(2024, 1, 1), dt.date(2024, 1, 2), dt.date(2024, 1, 3)
SOURCE = "generator"


def at(day, hh, mm, ss=0):
    return dt.datetime.combine(day, dt.time(hh, mm, ss))


def ev(event_id, user, ts, event_type="view", item="i1", price=10.0, brand="b"):
    return (event_id, user, ts, event_type, item, "c1", None, brand, price, None, SOURCE, ts.date())


def hand_made_events():
    rows = [
        # a: two events before midnight and one after (15 min gaps): one session; then a 50-min gap.
        ev("a1", "a", at(D1, 23, 40)),
        ev("a2", "a", at(D1, 23, 55), "cart"),
        ev("a3", "a", at(D2, 0, 10), "purchase"),
        ev("a4", "a", at(D2, 1, 0), item="i2"),
        # c: a single event with no brand and no price (the null row)
        ev("c1", "c", at(D2, 12, 0), price=None, brand=None),
    ]
    # b: an event every 20 minutes for 5 hours: one activity, cut after 240 minutes.
    rows += [ev(f"b{k:02d}", "b", at(D1, 0, 0) + dt.timedelta(minutes=20 * k), item=f"i{k % 3}") for k in range(16)]
    # d: a bot with 20 events in 20 seconds; the daily cap (16) quarantines the last 4.
    rows += [ev(f"d{k:02d}", "d", at(D1, 10, 0, k)) for k in range(20)]
    return rows


def sid(user, activity_start, slice_no):
    micros = int(activity_start.replace(tzinfo=dt.timezone.utc).timestamp() * 1_000_000)
    return hashlib.sha256(f"{SOURCE}|{user}|{micros}|{slice_no}".encode()).hexdigest()[:32]


def expected_sessions(spark):
    def row(user, activity, slice_no, start, end, counts, distinct, revenue):
        n_events = sum(counts)
        return (user, sid(user, activity, slice_no), SOURCE, start, end, (end - start).total_seconds(), activity,
                n_events, *counts, distinct, revenue, counts[4] > 0, start.date())

    b0 = at(D1, 0, 0)
    return spark.createDataFrame(
        [
            row("a", at(D1, 23, 40), 0, at(D1, 23, 40), at(D2, 0, 10), (1, 1, 0, 0, 1), 1, 10.0),
            row("a", at(D2, 1, 0), 0, at(D2, 1, 0), at(D2, 1, 0), (1, 0, 0, 0, 0), 1, 0.0),
            row("b", b0, 0, b0, at(D1, 3, 40), (12, 0, 0, 0, 0), 3, 0.0),
            row("b", b0, 1, at(D1, 4, 0), at(D1, 5, 0), (4, 0, 0, 0, 0), 3, 0.0),
            row("c", at(D2, 12, 0), 0, at(D2, 12, 0), at(D2, 12, 0), (1, 0, 0, 0, 0), 1, 0.0),
            row("d", at(D1, 10, 0), 0, at(D1, 10, 0), at(D1, 10, 0, 15), (16, 0, 0, 0, 0), 1, 0.0),
        ],
        schemas.SESSIONS,
    )


def lake_with_events(spark, tmp_path, name, rows):
    cfg = make_config(tmp_path / name, "sessionize.user_daily_cap=16")
    df = spark.createDataFrame(rows, schemas.EVENTS)
    tables.replace_where(df, cfg, C.EVENTS, "true", partition_by=[C.SOURCE, C.EVENT_DATE])
    return cfg


def table_rows(spark, cfg, table, drop=()):
    return sorted(tuple(r) for r in tables.read(spark, cfg, table).drop(*drop).collect())


def test_daily_runs_and_one_batch_run_give_the_exact_expected_sessions(spark, tmp_path):
    daily = lake_with_events(spark, tmp_path, "daily", hand_made_events())
    r1 = sessionize(spark, daily, source=SOURCE, date_from=D1, date_to=D1)
    r2 = sessionize(spark, daily, source=SOURCE, date_from=D2, date_to=D2)
    assert (r1.events_in, r1.events_sessionized, r1.events_capped) == (38, 34, 4)
    assert (r2.events_in, r2.events_sessionized, r2.events_capped) == (3, 3, 0)
    batch = lake_with_events(spark, tmp_path, "batch", hand_made_events())
    sessionize(spark, batch, source=SOURCE, date_from=D1, date_to=D2)

    expected = expected_sessions(spark)
    assertDataFrameEqual(tables.read(spark, daily, C.SESSIONS), expected)
    assertDataFrameEqual(tables.read(spark, batch, C.SESSIONS), expected)
    assert table_rows(spark, daily, C.SESSION_EVENTS) == table_rows(spark, batch, C.SESSION_EVENTS)

    a = tables.read(spark, daily, C.SESSION_EVENTS).filter("user_id = 'a'").orderBy("ts").collect()
    assert [(r.session_seq, r.is_session_start) for r in a] == [(1, True), (2, False), (3, False), (1, True)]
    assert len({r.session_id for r in a[:3]}) == 1  # the midnight-crossing session is one session

    capped = tables.read(spark, daily, C.EVENTS_QUARANTINE).orderBy("event_id").collect()
    assert [(r.event_id, r.reason, r.stage, r.run_date) for r in capped] == [
        (f"d{k}", "user_daily_cap", "sessionize", D1) for k in range(16, 20)]


def test_rerun_of_a_day_changes_nothing(spark, tmp_path):
    cfg = lake_with_events(spark, tmp_path, "rerun", hand_made_events())
    sessionize(spark, cfg, source=SOURCE, date_from=D1, date_to=D1)
    sessionize(spark, cfg, source=SOURCE, date_from=D2, date_to=D2)
    before = [table_rows(spark, cfg, t) for t in (C.SESSIONS, C.SESSION_EVENTS)]
    quarantine = table_rows(spark, cfg, C.EVENTS_QUARANTINE, drop=["run_id"])
    sessionize(spark, cfg, source=SOURCE, date_from=D2, date_to=D2)
    sessionize(spark, cfg, source=SOURCE, date_from=D1, date_to=D1)
    assert [table_rows(spark, cfg, t) for t in (C.SESSIONS, C.SESSION_EVENTS)] == before
    assert table_rows(spark, cfg, C.EVENTS_QUARANTINE, drop=["run_id"]) == quarantine


def test_skipped_day_fails_with_the_missing_date(spark, tmp_path):
    rows = hand_made_events() + [ev("z1", "z", at(D3, 9, 0))]
    cfg = lake_with_events(spark, tmp_path, "skip", rows)
    sessionize(spark, cfg, source=SOURCE, date_from=D1, date_to=D1)
    with pytest.raises(MissingPreviousDay, match="for 2024-01-02 were never sessionized"):
        sessionize(spark, cfg, source=SOURCE, date_from=D3, date_to=D3)
    assert not tables.read(spark, cfg, C.SESSION_EVENTS).filter(f"event_date = '{D3}'").count()


def stats_columns_in_log(cfg, table):
    """The columns with min/max statistics in any file the table's log ever added."""
    found = set()
    for commit in sorted(Path(cfg.table_path(table), "_delta_log").glob("*.json")):
        for line in commit.read_text().splitlines():
            added = json.loads(line).get("add")
            if added and added.get("stats"):
                found |= set(json.loads(added["stats"]).get("minValues", {}))
    return found


def test_wide_tables_record_statistics_only_for_their_skipping_columns(spark, tmp_path):
    # Statistics on every column cost ~40% of a write (tables.STATS_COLUMNS); the ones kept
    # must still be there, through both the first write and the MERGE of a later day.
    cfg = lake_with_events(spark, tmp_path, "stats", hand_made_events())
    sessionize(spark, cfg, source=SOURCE, date_from=D1, date_to=D1)
    sessionize(spark, cfg, source=SOURCE, date_from=D2, date_to=D2)
    assert stats_columns_in_log(cfg, C.EVENTS) == {"user_id", "ts"}
    assert stats_columns_in_log(cfg, C.SESSION_EVENTS) == {"user_id", "ts"}
    assert stats_columns_in_log(cfg, C.SESSIONS) == {"user_id", "session_start"}
    # Not in STATS_COLUMNS: Delta's default, the leading columns.
    assert {"run_id", "stage", "reason"} <= stats_columns_in_log(cfg, C.EVENTS_QUARANTINE)
