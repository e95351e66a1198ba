"""Per-user state: running aggregates and the last N raw events, updated nightly by MERGE.

A user's state row (``schemas.USER_STATE``) is a pure function of the user's events up to its
last one: ``history_state`` computes it in one pass over any set of days, and ``combine_states``
folds one more day into it. N daily folds give exactly the rows ``history_state`` gives over
the same days (tested), so a nightly run reads only that day's events plus the state table
(one row per user), never all history.

Runs (``seqlake state --date D``):
- no state yet for the source: bootstrap from every sessionized day up to D;
- the state holds D-1: fold in D (MERGE, only the users active on D change);
- the state already holds D (a rerun): nothing changes;
- the state is older than D-1: fail (exit 3), naming the first missing day;
- ``--rebuild``: recompute from all history up to D (after a re-ingested day, or a change of
  sequences.length).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import uuid

import pyspark.sql.functions as F
import pyspark.sql.types as T
from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession, Window

from seqlake import constants as C
from seqlake import schemas, tables, vocab
from seqlake.config import Config
from seqlake.progress import log, stage

KEY = [C.SOURCE, C.USER_ID]
DAILY_DAYS = 30  # days of cart/purchase counts kept: enough for the 30-day features
_MONEY = T.DecimalType(38, 6)


class StateGap(RuntimeError):
    """The state does not reach the day before the requested one, or a needed day is not sessionized."""


@dataclasses.dataclass(frozen=True)
class StateResult:
    run_id: str
    source: str
    state_date: dt.date
    mode: str
    events_in: int
    users_updated: int
    users_total: int


# --------------------------------------------------------------------------- transformations


def _state_columns() -> list[str]:
    return [f.name for f in schemas.USER_STATE.fields]


def history_state(events: DataFrame, *, length: int) -> DataFrame:
    """The state of every user in ``events`` (session_events rows), as of their last event.

    One shuffle by user: the window's partitioning serves both aggregations and their join.
    """
    by_time = Window.partitionBy(*KEY).orderBy(C.TS, C.EVENT_ID)
    whole = Window.partitionBy(*KEY)
    is_cart = F.col(C.EVENT_TYPE) == "cart"
    is_purchase = F.col(C.EVENT_TYPE) == "purchase"
    ranked = (
        events.withColumn("prev_ts", F.lag(C.TS).over(by_time))
        .withColumn("_n", F.row_number().over(by_time))
        .withColumn("_total", F.count(F.lit(1)).over(whole))
        .withColumn("_last_date", F.max(C.EVENT_DATE).over(whole))
    )
    # The position _n leads the struct so that sorting the collected list restores (ts, event_id)
    # order; it is dropped afterwards (the 32-character event_id would double the state's size).
    recent_event = F.struct(F.col("_n"), *[F.col(f.name) for f in schemas.RECENT_EVENT.fields])
    recent_fields = [f.name for f in schemas.RECENT_EVENT.fields]
    per_user = ranked.groupBy(*KEY).agg(
        F.min(C.TS).alias("first_ts"),
        F.max(C.TS).alias("last_ts"),
        F.max(C.EVENT_DATE).alias("last_event_date"),
        F.count(F.lit(1)).alias("n_events"),
        F.sum(is_purchase.cast("long")).alias("n_purchases"),
        F.sum(F.when(is_purchase, F.coalesce(F.col("price").cast(_MONEY), F.lit(0).cast(_MONEY)))
              .otherwise(F.lit(0).cast(_MONEY))).cast(_MONEY).alias("monetary"),
        F.sum(F.col("is_session_start").cast("long")).alias("n_sessions"),
        F.transform(
            F.array_sort(F.collect_list(F.when(F.col("_n") > F.col("_total") - length, recent_event))),
            lambda e: F.struct(*[e[name].alias(name) for name in recent_fields]),
        ).alias("recent"),
    )
    per_day = ranked.groupBy(*KEY, C.EVENT_DATE).agg(
        F.sum(is_cart.cast("long")).alias("carts"),
        F.sum(is_purchase.cast("long")).alias("purchases"),
        F.first("_last_date").alias("_last_date"),
    )
    keep_day = (F.col(C.EVENT_DATE) > F.date_sub("_last_date", DAILY_DAYS)) & (
        (F.col("carts") > 0) | (F.col("purchases") > 0)
    )
    days = per_day.groupBy(*KEY).agg(
        F.count(F.lit(1)).alias("active_days"),
        F.array_sort(
            F.collect_list(F.when(keep_day, F.struct(C.EVENT_DATE, "carts", "purchases")))
        ).alias("daily"),
    )
    return per_user.join(days, on=KEY, how="inner").select(*_state_columns())


def combine_states(day: DataFrame, old: DataFrame, *, day_date: dt.date, length: int) -> DataFrame:
    """Fold ``day`` (``history_state`` of one day's events) into ``old`` (the state before it).

    Only users active on the day come out; their rows equal ``history_state`` over all their
    events. Relies on every event of the day being later than the state's last event.
    """
    renamed = old.select(*KEY, *[F.col(c).alias(f"o_{c}") for c in _state_columns() if c not in KEY])
    joined = day.join(renamed, on=KEY, how="left")
    # The day's first event follows the user's last stored one.
    recent_day = F.transform(
        "recent",
        lambda e, i: F.when(i == 0, e.withField("prev_ts", F.coalesce(e["prev_ts"], F.col("o_last_ts")))).otherwise(e),
    )
    # slice(x, 1, 0): an empty array of x's type, for users new on the day.
    everything = F.concat(F.coalesce(F.col("o_recent"), F.slice("recent", 1, 0)), recent_day)
    first_kept = F.greatest(F.size(everything) - F.lit(length) + 1, F.lit(1))
    cutoff = day_date - dt.timedelta(days=DAILY_DAYS - 1)
    old_daily = F.filter(F.coalesce(F.col("o_daily"), F.slice("daily", 1, 0)), lambda d: d[C.EVENT_DATE] >= F.lit(cutoff))

    def plus(column: str) -> F.Column:
        return F.coalesce(F.col(f"o_{column}"), F.lit(0)) + F.col(column)

    return joined.select(
        *KEY,
        F.coalesce(F.col("o_first_ts"), F.col("first_ts")).alias("first_ts"),
        "last_ts",
        "last_event_date",
        plus("n_events").alias("n_events"),
        plus("n_purchases").alias("n_purchases"),
        (F.coalesce(F.col("o_monetary"), F.lit(0).cast(_MONEY)) + F.col("monetary")).cast(_MONEY).alias("monetary"),
        plus("n_sessions").alias("n_sessions"),
        plus("active_days").alias("active_days"),
        F.concat(old_daily, F.col("daily")).alias("daily"),
        F.slice(everything, first_kept, length).alias("recent"),
    )


# --------------------------------------------------------------------------- the run


def current_state_date(spark: SparkSession, cfg: Config, source: str) -> dt.date | None:
    """The day the source's state holds events up to (the latest run that changed it)."""
    if not tables.exists(spark, cfg, C.STATE_RUNS):
        return None
    row = (
        tables.read(spark, cfg, C.STATE_RUNS)
        .filter((F.col(C.SOURCE) == source) & (F.col("mode") != "noop"))
        .orderBy(F.col("finished_at").desc())
        .select(C.STATE_DATE)
        .first()
    )
    return row[C.STATE_DATE] if row else None


def require_sessionized(spark: SparkSession, cfg: Config, source: str, day: dt.date) -> None:
    that_day = f"source = '{source}' AND event_date = '{day}'"
    if tables.has_rows(spark, cfg, C.EVENTS, that_day) and not tables.has_rows(spark, cfg, C.SESSION_EVENTS, that_day):
        raise StateGap(
            f"events of source {source!r} for {day} were never sessionized; run "
            f"`seqlake sessionize --source {source} --date {day}` first"
        )


def session_events(spark: SparkSession, cfg: Config, source: str) -> DataFrame:
    return tables.read(spark, cfg, C.SESSION_EVENTS, schemas.SESSION_EVENTS).filter(F.col(C.SOURCE) == source)


def record_encoding_drift(spark: SparkSession, cfg: Config, *, run_id: str, source: str, day: dt.date) -> None:
    """run_metrics for the day: the share of its events in the null index and the OOV buckets of
    the latest vocabulary, per feature (a catalogue drifting away from the vocabulary shows here)."""
    version = vocab.latest_version(spark, cfg, source)
    if version is None:
        log.info("[state] no vocabulary for %s yet: no drift metrics for %s", source, day)
        return
    vocabulary = vocab.load(spark, cfg, source, version)
    encoded = session_events(spark, cfg, source).filter(F.col(C.EVENT_DATE) == F.lit(day))
    for column, feature in vocab.ENCODED.items():
        encoded = vocab.encode(encoded, feature, out=f"_enc_{column}", lookup=vocabulary.lookup(feature),
                               oov_buckets=vocabulary.oov_buckets[feature])
    encoded = encoded.select(*[F.col(f"_enc_{c}").alias(c) for c in vocab.ENCODED])
    counts = encoded.agg(*vocab.encoded_event_counts(encoded, vocabulary)).first().asDict()
    rows = vocab.metrics_rows(run_id, C.STAGE_STATE, source, day, vocabulary, counts)
    vocab.write_metrics(spark, cfg, rows, stage_name=C.STAGE_STATE, source=source, run_date=day)
    log.info("[state] %s OOV share by feature: %s", day, {r[5]: round(r[10], 4) for r in rows})


def update_state(
    spark: SparkSession, cfg: Config, *, source: str, day: dt.date, rebuild: bool = False
) -> StateResult:
    """Bring the state of ``source`` up to ``day`` (see the module docstring)."""
    run_id = f"state-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    started_at = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    length = cfg.sequences.length
    current = current_state_date(spark, cfg, source)
    require_sessionized(spark, cfg, source, day)
    path = cfg.table_path(C.USER_STATE)
    users_updated = 0
    if rebuild or current is None or not tables.exists(spark, cfg, C.USER_STATE):
        mode = "rebuild" if rebuild else "bootstrap"
        with stage(f"state: {mode} from all history up to {day}") as info:
            history = session_events(spark, cfg, source).filter(F.col(C.EVENT_DATE) <= F.lit(day))
            events_in = history.count()
            users_updated = tables.replace_where(
                history_state(history, length=length), cfg, C.USER_STATE, f"source = '{source}'",
                partition_by=[C.SOURCE],
            )
            # Deletion vectors: a nightly MERGE then writes the changed users' rows only,
            # instead of rewriting every file that holds one of them (all files, in practice).
            spark.sql(
                f"ALTER TABLE delta.`{path}` SET TBLPROPERTIES ('delta.enableDeletionVectors' = 'true')"
            )
            info.update(events_in=events_in, users=users_updated)
    elif day <= current:
        mode, events_in = "noop", 0
        log.info("[state] %s already holds %s (state date %s): nothing to do", source, day, current)
    elif day == current + dt.timedelta(days=1):
        mode = "incremental"
        with stage(f"state: fold {day} into the state of {current}") as info:
            day_events = session_events(spark, cfg, source).filter(F.col(C.EVENT_DATE) == F.lit(day))
            events_in = day_events.count()
            if events_in:
                # Only the day's users' old rows take part: a broadcast semi-join streams the
                # state once instead of shuffling every user's row into the join.
                day_users = F.broadcast(day_events.select(*KEY).distinct())
                old = (
                    tables.read(spark, cfg, C.USER_STATE)
                    .filter(F.col(C.SOURCE) == source)
                    .join(day_users, on=KEY, how="left_semi")
                )
                update = combine_states(history_state(day_events, length=length), old, day_date=day, length=length)
                target = DeltaTable.forPath(spark, path)
                (
                    target.alias("t")
                    .merge(update.alias("s"), f"t.source = '{source}' AND t.source = s.source AND t.user_id = s.user_id")
                    # A user's state never moves backwards (defence against a replayed day).
                    .whenMatchedUpdateAll(condition="t.last_event_date < s.last_event_date")
                    .whenNotMatchedInsertAll()
                    .execute()
                )
                metrics = target.history(1).select("operationMetrics").first()[0]
                users_updated = int(metrics.get("numTargetRowsUpdated", 0)) + int(metrics.get("numTargetRowsInserted", 0))
            info.update(events_in=events_in, users_updated=users_updated)
    else:
        missing = current + dt.timedelta(days=1)
        raise StateGap(
            f"the state of source {source!r} holds events up to {current}; run "
            f"`seqlake state --source {source} --date {missing}` (and the days after it) first, "
            f"or `--rebuild`"
        )
    if mode != "noop":
        record_encoding_drift(spark, cfg, run_id=run_id, source=source, day=day)
    users_total = tables.read(spark, cfg, C.USER_STATE).filter(F.col(C.SOURCE) == source).count()
    state_date = day if mode != "noop" else current
    result = StateResult(run_id, source, state_date, mode, events_in, users_updated, users_total)
    row = (run_id, source, state_date, mode, events_in, users_updated, users_total, started_at,
           dt.datetime.now(dt.timezone.utc).replace(tzinfo=None))
    tables.append(spark.createDataFrame([row], schemas.STATE_RUNS), cfg, C.STATE_RUNS)
    return result
