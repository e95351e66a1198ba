"""Cut each user's events into sessions, incrementally per day and identically in batch.

Rule (documented in docs/design.md, "Sessions"):
- A user's events are ordered by (ts, event_id). A gap of MORE than ``gap_minutes`` between two
  consecutive events ends the uninterrupted *activity*; the next event starts a new one.
- An activity longer than ``max_duration_minutes`` is cut into sessions at fixed offsets from
  its first event: the event at ``ts`` belongs to slice floor((ts - activity_start) /
  max_duration). Each (activity, slice) with at least one event is a session.
- ``session_id`` = 128 bits of SHA-256 over (source, user_id, activity_start, slice): it depends
  only on the events, so a session crossing midnight has the same id whether days run one by
  one or together.
- Events beyond ``user_daily_cap`` of one user on one UTC day (the first ``cap`` by (ts,
  event_id) are kept) are quarantined with reason ``user_daily_cap`` before sessionizing, so a
  bot cannot blow up one task.

Incremental runs: the run for [from, to] reads the events of those days plus, from
``session_events``, each user's last event before ``from`` if it lies within ``gap_minutes``
of midnight; the events of ``from`` continue that event's session. Session rows are
recomputed from ``session_events`` for every session touched by the run and MERGEd, so a rerun
of the same day with the same input changes nothing.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import math
import uuid

import pyspark.sql.functions as F
from delta.tables import DeltaTable
from pyspark.sql import Column, DataFrame, Observation, SparkSession, Window

from seqlake import constants as C
from seqlake import schemas, tables
from seqlake.config import Config
from seqlake.progress import log, stage

_MICROS_PER_MINUTE = 60_000_000


class MissingPreviousDay(RuntimeError):
    """The day before the run has events that were never sessionized, or was never ingested."""


@dataclasses.dataclass(frozen=True)
class SessionizeResult:
    run_id: str
    source: str
    date_from: dt.date
    date_to: dt.date
    events_in: int
    events_sessionized: int
    events_capped: int
    sessions_touched: int

    @property
    def balanced(self) -> bool:
        return self.events_in == self.events_sessionized + self.events_capped


def lookback_days(*, gap_minutes: int, max_duration_minutes: int) -> int:
    """Whole days a session can reach back from its last event (max duration plus one gap)."""
    return math.ceil((max_duration_minutes + gap_minutes) / (24 * 60))


# --------------------------------------------------------------------------- transformations


def with_day_rank(events: DataFrame) -> DataFrame:
    """Add ``day_rank``: the event's 1-based position in its user's UTC day by (ts, event_id)."""
    by_user_day = Window.partitionBy(C.USER_ID, C.EVENT_DATE).orderBy(C.TS, C.EVENT_ID)
    return events.withColumn("day_rank", F.row_number().over(by_user_day))


def open_session_tail(session_events: DataFrame, *, day: dt.date, gap_minutes: int) -> DataFrame:
    """Each user's last event before ``day`` if it is within ``gap_minutes`` of midnight.

    Output: user_id, source, event_date, tail_end, tail_activity_start, tail_session_id,
    tail_n_events (the event's position in its session, i.e. the session's length so far). Built from
    ``session_events`` before ``day`` only, so it is the same whether or not ``day`` or later
    days were already processed (reruns). Expects ``session_events`` restricted to the days
    that can hold such an event.
    """
    midnight = dt.datetime.combine(day, dt.time())
    latest = Window.partitionBy(C.USER_ID).orderBy(F.col(C.TS).desc(), F.col(C.EVENT_ID).desc())
    return (
        session_events.filter(F.col(C.TS) >= F.lit(midnight - dt.timedelta(minutes=gap_minutes)))
        .filter(F.col(C.TS) < F.lit(midnight))
        .withColumn("_latest", F.row_number().over(latest))
        .filter(F.col("_latest") == 1)
        .select(
            C.USER_ID,
            C.SOURCE,
            C.EVENT_DATE,
            F.col(C.TS).alias("tail_end"),
            F.col("activity_start").alias("tail_activity_start"),
            F.col(C.SESSION_ID).alias("tail_session_id"),
            F.col("session_seq").alias("tail_n_events"),
        )
    )


def with_tail_rows(events: DataFrame, tail: DataFrame) -> DataFrame:
    """``events`` plus each ``open_session_tail`` row as one more event of its user, marked by a
    non-null ``tail_session_id`` (and tail_activity_start, tail_n_events; null on real events).

    The tail row sorts before the user's first event of the run (its day is earlier), so the
    windows of ``with_session_assignment`` see it as the previous event: no join, and so no
    second sort after one.
    """
    event_cols = [f.name for f in schemas.EVENTS.fields]
    marks = {"tail_activity_start": "timestamp", "tail_session_id": "string", "tail_n_events": "int"}
    known = {C.USER_ID: F.col(C.USER_ID), C.TS: F.col("tail_end"), C.SOURCE: F.col(C.SOURCE),
             C.EVENT_DATE: F.col(C.EVENT_DATE)}
    as_events = tail.select(
        *[known.get(name, F.lit(None).cast(schemas.EVENTS[name].dataType)).alias(name) for name in event_cols],
        *marks,
    )
    return events.select(
        *event_cols, *[F.lit(None).cast(kind).alias(name) for name, kind in marks.items()]
    ).unionByName(as_events)


def with_session_assignment(events: DataFrame, *, gap_minutes: int, max_duration_minutes: int) -> DataFrame:
    """Add activity_start, session_id, session_seq and is_session_start to every event.

    ``events`` is ``with_tail_rows`` of whole user-days in [from, to] and the open tail of
    ``from`` (none for a first run); the tail rows are dropped from the result. Best
    hash-partitioned by user_id beforehand: every window here partitions by user_id and orders
    alike, so that exchange and one sort are all it needs.
    """
    gap_us = gap_minutes * _MICROS_PER_MINUTE
    max_us = max_duration_minutes * _MICROS_PER_MINUTE
    is_tail = F.col("tail_session_id").isNotNull()
    # event_date leads the order (it follows ts, so the order is the same) so that this window
    # and with_day_rank's need one and the same sort.
    by_user = Window.partitionBy(C.USER_ID).orderBy(C.EVENT_DATE, C.TS, C.EVENT_ID)
    so_far = by_user.rowsBetween(Window.unboundedPreceding, Window.currentRow)

    def slice_of(ts: str) -> Column:
        return F.floor((F.unix_micros(ts) - F.unix_micros("activity_start")) / F.lit(max_us))

    gap_break = F.col("_previous_ts").isNull() | (
        (F.unix_micros(C.TS) - F.unix_micros("_previous_ts")) > gap_us
    )
    session_id = F.substring(
        F.sha2(
            F.concat_ws(
                "|", C.SOURCE, C.USER_ID, F.unix_micros("activity_start").cast("string"),
                F.col("_slice").cast("long").cast("string"),
            ),
            256,
        ),
        1,
        32,
    )
    # A session starts where the activity does, or where its slice changes (the previous
    # event, not a break, shares this event's activity_start).
    starts = ~is_tail & (F.col("_gap_break") | (F.col("_slice") != slice_of("_previous_ts")))
    # The tail row stands at position 1 of a session already tail_n_events long: its session
    # "started" at 2 - tail_n_events, so the events continuing it number on from there.
    start_position = F.max(
        F.when(is_tail, 2 - F.col("tail_n_events")).when(F.col("is_session_start"), F.col("_position"))
    ).over(so_far)
    return (
        events.withColumn("_previous_ts", F.lag(C.TS).over(by_user))
        .withColumn("_position", F.row_number().over(by_user))
        .withColumn("_gap_break", gap_break)
        # ts never decreases along the window, so the latest break is the running maximum; the
        # tail row brings its activity's start.
        .withColumn(
            "activity_start",
            F.max(F.when(is_tail, F.col("tail_activity_start")).when(F.col("_gap_break"), F.col(C.TS))).over(so_far),
        )
        .withColumn("_slice", slice_of(C.TS))
        .withColumn(C.SESSION_ID, F.when(is_tail, F.col("tail_session_id")).otherwise(session_id))
        .withColumn("is_session_start", starts)
        .withColumn("session_seq", (F.col("_position") - start_position + 1).cast("int"))
        .filter(~is_tail)
        .select(*[f.name for f in schemas.SESSION_EVENTS.fields])
    )


def sessions_from_events(session_events: DataFrame, *, touching: tuple[dt.date, dt.date] | None = None) -> DataFrame:
    """One row per session, aggregated from all its events (schema ``schemas.SESSIONS``).

    With ``touching=(first, last)``, only sessions with at least one event on those days.
    """
    counts = [
        F.sum(F.when(F.col(C.EVENT_TYPE) == t, 1).otherwise(0)).cast("long").alias(f"n_{t}")
        for t in C.EVENT_TYPES
    ]
    revenue = F.sum(F.when(F.col(C.EVENT_TYPE) == "purchase", F.coalesce(F.col("price"), F.lit(0.0))))
    first, last = touching or (dt.date.min, dt.date.max)
    return (
        session_events.groupBy(C.SOURCE, C.USER_ID, C.SESSION_ID)
        .agg(
            F.min(C.TS).alias("session_start"),
            F.max(C.TS).alias("session_end"),
            F.min("activity_start").alias("activity_start"),
            F.count(F.lit(1)).alias("n_events"),
            *counts,
            F.size(F.collect_set("item_id")).cast("long").alias("distinct_items"),
            F.coalesce(revenue, F.lit(0.0)).alias("revenue"),
            F.max(F.col(C.EVENT_DATE).between(F.lit(first), F.lit(last))).alias("_touches"),
        )
        .filter(F.col("_touches"))
        .withColumn("has_purchase", F.col("n_purchase") > 0)
        .withColumn(
            "duration_seconds",
            (F.unix_micros("session_end") - F.unix_micros("session_start")) / F.lit(1_000_000.0),
        )
        .withColumn(C.SESSION_DATE, F.to_date("session_start"))
        .select(*[f.name for f in schemas.SESSIONS.fields])
    )


def select_capped_quarantine(capped: DataFrame, *, run_id: str, cap: int) -> DataFrame:
    """Events over the per-user daily cap as quarantine rows (the event itself as JSON)."""
    event_cols = [f.name for f in schemas.EVENTS.fields]
    return capped.select(
        F.lit(run_id).alias("run_id"),
        F.lit(C.STAGE_SESSIONIZE).alias("stage"),
        C.SOURCE,
        F.lit(C.USER_DAILY_CAP).alias("reason"),
        F.concat(F.lit("event "), F.col("day_rank").cast("string"), F.lit(f" of the user's day, cap {cap}")).alias(
            "detail"
        ),
        F.to_json(F.struct(*event_cols)).alias("raw_record"),
        F.lit(None).cast("string").alias("source_file"),
        C.USER_ID,
        C.EVENT_ID,
        F.col(C.TS).alias("event_ts"),
        F.col(C.EVENT_DATE).alias(C.RUN_DATE),
    )


def source_session_agreement(session_events: DataFrame) -> dict[str, float]:
    """How often our sessions coincide with the source's own session ids (e.g. REES46's).

    An exact match is a session of ours whose events all carry one source session id that no
    other session of ours carries. Returns counts and shares; only aggregates reach the driver.
    """
    labelled = session_events.filter(F.col("source_session_id").isNotNull())
    ours = labelled.groupBy(C.SESSION_ID).agg(
        F.countDistinct("source_session_id").alias("n_source"), F.first("source_session_id").alias("sid")
    )
    theirs = labelled.groupBy("source_session_id").agg(F.countDistinct(C.SESSION_ID).alias("n_ours"))
    joined = ours.join(theirs, ours["sid"] == theirs["source_session_id"], how="left")
    row = joined.agg(
        F.count(F.lit(1)).alias("ours"),
        F.sum(F.when((F.col("n_source") == 1) & (F.col("n_ours") == 1), 1).otherwise(0)).alias("exact"),
        F.sum(F.when(F.col("n_source") > 1, 1).otherwise(0)).alias("merged"),
    ).first()
    n_theirs = theirs.count()
    ours_n, exact = row["ours"] or 0, row["exact"] or 0
    return {
        "our_sessions": ours_n,
        "source_sessions": n_theirs,
        "exact_matches": exact,
        "our_sessions_spanning_several_source_sessions": row["merged"] or 0,
        "share_of_our_sessions_matching": exact / ours_n if ours_n else 0.0,
        "share_of_source_sessions_matching": exact / n_theirs if n_theirs else 0.0,
    }


# --------------------------------------------------------------------------- the run


def _date_range_sql(column: str, start: dt.date, end: dt.date) -> str:
    return f"{column} >= '{start}' AND {column} <= '{end}'"


def never_sessionized(spark: SparkSession, cfg: Config, source: str, day: dt.date) -> bool:
    """Whether ``day`` has events of ``source`` that were never sessionized."""
    that_day = f"source = '{source}' AND event_date = '{day}'"
    # session_events first: on a normal night it has the day, and events need not be opened.
    return not tables.has_rows(spark, cfg, C.SESSION_EVENTS, that_day) and tables.has_rows(
        spark, cfg, C.EVENTS, that_day
    )


def never_ingested(spark: SparkSession, cfg: Config, source: str, day: dt.date) -> bool:
    """Whether ``day`` is a gap: no successful ingest run of ``source`` covers it and it holds no
    events, while earlier days do. (A day without data still has its run, of 0 rows.)"""
    if not tables.exists(spark, cfg, C.INGEST_RUNS):
        return False
    covered = (f"source = '{source}' AND status = 'ok' AND window_start <= '{day}' AND window_end >= '{day}'")
    return (
        not tables.has_rows(spark, cfg, C.INGEST_RUNS, covered)
        and not tables.has_rows(spark, cfg, C.EVENTS, f"source = '{source}' AND event_date = '{day}'")
        and tables.has_rows(spark, cfg, C.EVENTS, f"source = '{source}' AND event_date < '{day}'")
    )


@dataclasses.dataclass(frozen=True)
class MissingStep:
    """The first step a day still lacks: the day, what happened to it, and the one command that
    mends it (it succeeds when run next). ``str()`` is the advice every refusal ends with."""

    day: dt.date
    reason: str
    command: str

    def __str__(self) -> str:
        return f"run `{self.command}` first: {self.reason}"


def sessionized_through(spark: SparkSession, cfg: Config, source: str) -> dt.date | None:
    """The last day sessionize has run for (from its audit table; no scan of the events)."""
    if not tables.exists(spark, cfg, C.SESSIONIZE_RUNS):
        return None
    return (tables.read(spark, cfg, C.SESSIONIZE_RUNS).filter(F.col(C.SOURCE) == source)
            .agg(F.max("date_to").alias("d")).first()["d"])


def missing_step(spark: SparkSession, cfg: Config, source: str, day: dt.date) -> MissingStep | None:
    """The first day up to ``day`` that sessionize still lacks, and its command: `seqlake ingest`
    for a day never ingested, `seqlake sessionize` for one whose events were never sessionized.
    None when every such day is done.

    Days are looked at from the day after the last sessionize run (or from ``day`` itself, when
    that run is later): one or two cheap lookups per day of the gap.
    """
    through = sessionized_through(spark, cfg, source)
    current = day if through is None or through >= day else through + dt.timedelta(days=1)
    while current <= day:
        if never_ingested(spark, cfg, source, current):
            return MissingStep(current, f"source {source!r} was never ingested for {current}",
                               f"seqlake ingest --source {source} --date {current}")
        if never_sessionized(spark, cfg, source, current):
            return MissingStep(current, f"the events of source {source!r} for {current} were never sessionized",
                               f"seqlake sessionize --source {source} --date {current}")
        current += dt.timedelta(days=1)
    return None


def check_previous_day(spark: SparkSession, cfg: Config, source: str, day: dt.date) -> None:
    """Fail when ``day`` (the day before a run) has events that were never sessionized, or was
    never ingested at all: either way a skipped night, and sessions crossing its midnights would
    be cut wrongly. The message names the first day missing and the command that mends it."""
    if never_sessionized(spark, cfg, source, day) or never_ingested(spark, cfg, source, day):
        step = missing_step(spark, cfg, source, day)
        raise MissingPreviousDay(
            f"sessions of {day + dt.timedelta(days=1)} continue those of {day}, which source {source!r} "
            f"lacks; {step}"
        )


def sessionize(
    spark: SparkSession, cfg: Config, *, source: str, date_from: dt.date, date_to: dt.date
) -> SessionizeResult:
    """Sessionize the events of ``source`` for the UTC days [date_from, date_to]."""
    settings = cfg.sessionize
    run_id = f"sessionize-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    started_at = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    back = lookback_days(gap_minutes=settings.gap_minutes, max_duration_minutes=settings.max_duration_minutes)
    check_previous_day(spark, cfg, source, date_from - dt.timedelta(days=1))
    log.info("[sessionize] run %s source=%s days=%s..%s", run_id, source, date_from, date_to)

    in_days = (F.col(C.SOURCE) == source) & F.col(C.EVENT_DATE).between(F.lit(date_from), F.lit(date_to))
    events = tables.read(spark, cfg, C.EVENTS, schemas.EVENTS).filter(in_days)
    # Counted from the table itself, independently of the writes it must balance.
    events_in = events.count()
    gap_days = math.ceil(settings.gap_minutes / (24 * 60))
    previous = tables.read(spark, cfg, C.SESSION_EVENTS, schemas.SESSION_EVENTS).filter(
        (F.col(C.SOURCE) == source)
        & F.col(C.EVENT_DATE).between(
            F.lit(date_from - dt.timedelta(days=gap_days)), F.lit(date_from - dt.timedelta(days=1))
        )
    )
    tail = open_session_tail(previous, day=date_from, gap_minutes=settings.gap_minutes)
    # No partition count: AQE coalesces spark.shuffle_partitions to the advisory size, so each
    # task's sort stays the same size as the input grows (a fixed count spilled ever more).
    # A tail row is alone on its (earlier) day: day_rank 1, never over the cap.
    ranked = events.transform(with_tail_rows, tail=tail).repartition(C.USER_ID).transform(with_day_rank)
    cap = settings.user_daily_cap
    over_cap = Observation("over_cap")
    with stage("sessionize: assign sessions") as info:
        assigned = with_session_assignment(
            ranked.observe(over_cap, F.sum(F.when(F.col("day_rank") > cap, 1).otherwise(0)).alias("n"))
            .filter(F.col("day_rank") <= cap),
            gap_minutes=settings.gap_minutes,
            max_duration_minutes=settings.max_duration_minutes,
        )
        sessionized = tables.replace_where(
            assigned,
            cfg,
            C.SESSION_EVENTS,
            f"source = '{source}' AND " + _date_range_sql(C.EVENT_DATE, date_from, date_to),
            partition_by=[C.SOURCE, C.EVENT_DATE],
        )
        info.update(events_in=events_in, events_sessionized=sessionized)

    with stage("sessionize: quarantine events over the daily cap") as info:
        where_capped = (
            f"stage = '{C.STAGE_SESSIONIZE}' AND source = '{source}' AND "
            + _date_range_sql(C.RUN_DATE, date_from, date_to)
        )
        # Recomputing the ranking is paid only on days that have bots (or had them before).
        capped = tables.replace_where_unless_noop(
            select_capped_quarantine(ranked.filter(F.col("day_rank") > cap), run_id=run_id, cap=cap),
            cfg, C.EVENTS_QUARANTINE, where_capped, partition_by=[C.RUN_DATE],
            adds_rows=(over_cap.get.get("n") or 0) > 0,
        )
        info.update(events_capped=capped)

    with stage("sessionize: merge sessions") as info:
        touched = (
            tables.read(spark, cfg, C.SESSION_EVENTS)
            .filter(
                (F.col(C.SOURCE) == source)
                & F.col(C.EVENT_DATE).between(
                    F.lit(date_from - dt.timedelta(days=back)), F.lit(date_to + dt.timedelta(days=back))
                )
            )
            .transform(sessions_from_events, touching=(date_from, date_to))
        )
        sessions_touched = merge_sessions(spark, cfg, touched, source=source, date_from=date_from,
                                          date_to=date_to, back=back)
        info.update(sessions_touched=sessions_touched)

    result = SessionizeResult(run_id, source, date_from, date_to, events_in, sessionized, capped, sessions_touched)
    row = (run_id, source, date_from, date_to, started_at, dt.datetime.now(dt.timezone.utc).replace(tzinfo=None),
           events_in, sessionized, capped, sessions_touched)
    tables.append(spark.createDataFrame([row], schemas.SESSIONIZE_RUNS), cfg, C.SESSIONIZE_RUNS)
    if not result.balanced:
        raise RuntimeError(
            f"sessionize accounting does not balance: {events_in} events in, {sessionized} "
            f"sessionized + {capped} quarantined over the daily cap"
        )
    return result


def merge_sessions(
    spark: SparkSession, cfg: Config, touched: DataFrame, *, source: str, date_from: dt.date,
    date_to: dt.date, back: int,
) -> int:
    """Upsert the recomputed sessions; delete this range's sessions that no longer exist.

    Returns the number of sessions upserted.
    """
    if not tables.exists(spark, cfg, C.SESSIONS):
        return tables.replace_where(
            touched, cfg, C.SESSIONS,
            f"source = '{source}' AND " + _date_range_sql(C.SESSION_DATE, date_from - dt.timedelta(days=back), date_to),
            partition_by=[C.SOURCE, C.SESSION_DATE],
        )
    touched = touched.persist()
    try:
        upserted = touched.count()
        target = DeltaTable.forPath(spark, cfg.table_path(C.SESSIONS))
        in_scope = (
            f"t.source = '{source}' AND "
            + _date_range_sql("t.session_date", date_from - dt.timedelta(days=back), date_to)
        )
        (
            target.alias("t")
            .merge(touched.alias("s"), f"{in_scope} AND t.session_id = s.session_id")
            .whenMatchedUpdateAll()
            .whenNotMatchedInsertAll()
            .whenNotMatchedBySourceDelete(
                condition=f"t.source = '{source}' AND " + _date_range_sql("t.session_date", date_from, date_to)
            )
            .execute()
        )
    finally:
        touched.unpersist()
    return upserted
