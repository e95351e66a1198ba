"""Per-user state: running aggregates and the last N encoded events, updated nightly by MERGE.

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
- ``--rebuild``: recompute from all history up to D (after a re-ingested day, a change of
  sequences.length, or to encode with another vocabulary version: ``--vocab-version``).

The per-event arrays are stored encoded with one vocabulary version (recorded per row and per
run); a night folds the day in with that same version, so it never drifts under a refit.

Besides the sequence features, the state accumulates what ``profiles`` needs, each foldable
exactly: event counts per event type for every category and brand the user touched, events per
UTC hour and per weekday, session starts per active day of the last 30, and the total session
duration (``session_micros``). The day's first event may continue the session of the user's last
stored event (a session crossing midnight); its gap to ``last_ts`` is only known at fold time, so
``day_state`` tells ``combine_states`` whether that first event opens a session (``OPENS_SESSION``).
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
from seqlake.sessionize import MissingStep, never_ingested, never_sessionized
from seqlake.sessionize import missing_step as sessionize_step

KEY = [C.SOURCE, C.USER_ID]
DAILY_DAYS = 30  # active days kept in `daily`: enough for the 30-day features
_MONEY = T.DecimalType(38, 6)
# day_state only: whether the day's first event opens a session (False: it continues the
# session of the user's last stored event, and its gap to that event is session time).
OPENS_SESSION = "_opens_session"


class StateGap(RuntimeError):
    """The state does not reach the day before the requested one, or a needed day is not sessionized."""


@dataclasses.dataclass(frozen=True)
class StateResult:
    run_id: str
    source: str
    state_date: dt.date
    mode: str
    vocab_version: int
    events_in: int
    users_updated: int
    users_total: int


# --------------------------------------------------------------------------- transformations


def _state_columns() -> list[str]:
    return [f.name for f in schemas.USER_STATE.fields]


def _field_of(name: str):
    """A one-argument lambda for F.transform (it counts arguments: no default-argument tricks)."""
    return lambda element: element[name]


def _counts_by_event_type() -> F.Column:
    """Aggregate: the group's events per event type, in constants.EVENT_TYPES order."""
    return F.array(*[F.sum((F.col(C.EVENT_TYPE) == t).cast("long")) for t in C.EVENT_TYPES])


def _add_arrays(a: F.Column, b: F.Column) -> F.Column:
    return F.zip_with(a, b, lambda x, y: x + y)


def _add_count_maps(a: F.Column, b: F.Column) -> F.Column:
    """Token -> counts maps added token by token (a token missing on one side counts zero there)."""
    return F.map_zip_with(
        a, b, lambda _, x, y: F.when(x.isNull(), y).when(y.isNull(), x).otherwise(_add_arrays(x, y))
    )


def _per_user(encoded: DataFrame, *, length: int, vocab_version: int) -> DataFrame:
    """``history_state``'s rows plus ``OPENS_SESSION`` (see ``day_state``)."""
    # One window (one sort, one pass over each user's events) gives every per-event value.
    # Ordered by day first: event_date is ts's UTC date, so the order is the same, and each day's
    # events are then contiguous.
    by_time = Window.partitionBy(*KEY).orderBy(C.EVENT_DATE, C.TS, C.EVENT_ID)
    so_far = by_time.rowsBetween(Window.unboundedPreceding, Window.currentRow)
    is_cart = F.col(C.EVENT_TYPE) == "cart"
    is_purchase = F.col(C.EVENT_TYPE) == "purchase"
    is_start = F.col("is_session_start")
    day_flags = {"carts": is_cart, "purchases": is_purchase, "sessions": is_start}
    enc = [vocab.ENC_PREFIX + name for name in vocab.ARRAYS]
    ranked = encoded.select(
        "*",
        F.lag(C.TS).over(by_time).alias("_prev_ts"),
        F.row_number().over(by_time).alias("_n"),
        # One of the user's last `length` events: none `length` places later. Collecting only
        # those bounds the list below for a user with millions of events.
        F.lead(C.TS, length).over(by_time).isNull().alias("_in_last"),
        # The day's last event: its running totals close the day.
        F.coalesce(F.lead(C.EVENT_DATE).over(by_time) != F.col(C.EVENT_DATE), F.lit(True)).alias("_day_end"),
        *[F.sum(flag.cast("long")).over(so_far).alias(f"_{name}_so_far") for name, flag in day_flags.items()],
    ).withColumn(vocab.ENC_PREFIX + "gap_bucket", vocab.gap_bucket(F.col(C.TS), F.col("_prev_ts")))
    # An event that continues a session adds its gap to the previous event: summed, the sessions'
    # durations. Without a previous event here (the first of a day_state), combine_states adds it.
    session_gap = F.when(
        ~is_start & F.col("_prev_ts").isNotNull(), F.unix_micros(C.TS) - F.unix_micros("_prev_ts")
    ).otherwise(F.lit(0).cast("long"))
    # The position _n leads the struct, so sorting the collected list restores time order.
    recent_event = F.struct(F.col("_n"), *[F.col(c) for c in enc])
    day_totals = F.struct(C.EVENT_DATE, *[F.col(f"_{name}_so_far").alias(name) for name in day_flags])
    per_user = ranked.groupBy(*KEY).agg(
        F.min(C.TS).alias("first_ts"),
        F.max(C.TS).alias("last_ts"),
        F.max(C.EVENT_DATE).alias("last_event_date"),
        F.count(F.lit(1)).alias("n_events"),
        F.sum(is_purchase.cast("long")).alias("n_purchases"),
        F.sum(F.when(is_purchase, F.coalesce(F.col("price").cast(_MONEY), F.lit(0).cast(_MONEY)))
              .otherwise(F.lit(0).cast(_MONEY))).cast(_MONEY).alias("monetary"),
        F.sum(is_start.cast("long")).alias("n_sessions"),
        F.sum(session_gap).alias("session_micros"),
        # Hours of ts and weekdays of event_date are UTC (the session time zone, spark.py).
        F.array(*[F.sum((F.hour(C.TS) == h).cast("long")) for h in range(24)]).alias("hour_counts"),
        F.array(*[F.sum((F.weekday(C.EVENT_DATE) == d).cast("long")) for d in range(7)]).alias("weekday_counts"),
        F.bool_or((F.col("_n") == 1) & is_start).alias(OPENS_SESSION),
        F.array_sort(F.collect_list(F.when(F.col("_in_last"), recent_event))).alias("_recent"),
        # One entry per active day (bounded by the days of history), its running totals.
        F.array_sort(F.collect_list(F.when(F.col("_day_end"), day_totals))).alias("_day_totals"),
    )
    # A day's counts are its running totals less the previous active day's; every active day of
    # the 30 ending with the last one is kept (combine_states keeps the same days).
    totals = F.col("_day_totals")

    def day_counts(day: F.Column, i: F.Column) -> F.Column:
        # i is the day's 0-based index, so the 1-based element i is the previous day (none at 0).
        before = F.when(i > 0, F.element_at(totals, i))
        return F.struct(day[C.EVENT_DATE].alias(C.EVENT_DATE), *[
            (day[name] - F.coalesce(before[name], F.lit(0).cast("long"))).alias(name) for name in day_flags
        ])

    recent_days = F.filter(
        F.transform(totals, day_counts),
        lambda d: d[C.EVENT_DATE] > F.date_sub(F.col("last_event_date"), DAILY_DAYS),
    )
    per_user = per_user.withColumn("active_days", F.size(totals).cast("long")).withColumn("daily", recent_days)
    # Categories and brands in one pass: each event counts once under ("c", category_id) and once
    # under ("b", brand); a null brand is grouped but left out of the map.
    tokens = (
        ranked.select(*KEY, C.EVENT_TYPE, F.explode(F.array(
            F.struct(F.lit("c").alias("kind"), F.col("category_id").alias("token")),
            F.struct(F.lit("b").alias("kind"), F.col("brand").alias("token")),
        )).alias("_t"))
        .select(*KEY, C.EVENT_TYPE, "_t.kind", "_t.token")
        .groupBy(*KEY, "kind", "token")
        .agg(_counts_by_event_type().alias("counts"))
    )

    def count_map(kind: str) -> F.Column:
        entry = F.when((F.col("kind") == kind) & F.col("token").isNotNull(), F.struct("token", "counts"))
        return F.map_from_entries(F.collect_list(entry))

    by_token = tokens.groupBy(*KEY).agg(
        count_map("c").alias("category_counts"), count_map("b").alias("brand_counts")
    )
    return (
        # Every user has a category, so "left" equals "inner" here; but a left join whose right
        # side is unused is dropped by Spark: sequence snapshots from history skip this branch.
        per_user.join(by_token, on=KEY, how="left")
        .withColumn(C.VOCAB_VERSION, F.lit(vocab_version))
        .select(
            *[c for c in _state_columns() if c not in vocab.ARRAYS],
            OPENS_SESSION,
            *[F.transform("_recent", _field_of(c)).alias(name) for name, c in zip(vocab.ARRAYS, enc)],
        )
        .select(*_state_columns(), OPENS_SESSION)
    )


def history_state(encoded: DataFrame, *, length: int, vocab_version: int) -> DataFrame:
    """The state of every user in ``encoded`` (session_events rows through
    ``vocab.with_encoded_tokens``), as of their last event.

    Keeps the LAST ``length`` events of each user, in (ts, event_id) order. Both branches (per
    user, and per category and brand) end partitioned by user, so they join without another
    shuffle.
    """
    return _per_user(encoded, length=length, vocab_version=vocab_version).select(*_state_columns())


def day_state(encoded: DataFrame, *, length: int, vocab_version: int) -> DataFrame:
    """``history_state`` of one day's events plus ``OPENS_SESSION``: whether the user's first
    event of the day opens a session. The input of ``combine_states``."""
    return _per_user(encoded, length=length, vocab_version=vocab_version)


def combine_states(day: DataFrame, old: DataFrame, *, day_date: dt.date, length: int) -> DataFrame:
    """Fold ``day`` (``day_state`` of one day's events) into ``old`` (the state before it).

    Only users active on the day come out; their rows equal ``history_state`` over all their
    events. Relies on every event of the day being later than the state's last event, and on
    both sides being encoded with the same vocabulary version.
    """
    renamed = old.select(*KEY, *[F.col(c).alias(f"o_{c}") for c in _state_columns() if c not in KEY])
    # The day's first event follows the user's last stored one: its gap is from o_last_ts. It
    # sits at position 0 of the day's arrays unless the day alone had more than `length` events.
    # Computed as columns first: inside a lambda, `n_events` would resolve to the select's own
    # alias of that name (a lateral column alias), not to the day's count.
    joined = (
        day.join(renamed, on=KEY, how="left")
        .withColumn("_first_gap", vocab.gap_bucket(F.col("first_ts"), F.col("o_last_ts")))
        .withColumn("_fix_first", (F.col("n_events") <= F.lit(length)) & F.col("o_last_ts").isNotNull())
        # A first event that continues the stored last event's session (across midnight) adds
        # that gap: day_state could not see it.
        .withColumn("_carried_micros", F.when(
            ~F.col(OPENS_SESSION) & F.col("o_last_ts").isNotNull(),
            F.unix_micros("first_ts") - F.unix_micros("o_last_ts"),
        ).otherwise(F.lit(0).cast("long")))
        # Count sums as columns first too: names next to lambdas then resolve to the day's
        # columns, never to the select's aliases of the same names.
        .withColumn("_hour_counts", F.when(F.col("o_hour_counts").isNull(), F.col("hour_counts"))
                    .otherwise(_add_arrays(F.col("o_hour_counts"), F.col("hour_counts"))))
        .withColumn("_weekday_counts", F.when(F.col("o_weekday_counts").isNull(), F.col("weekday_counts"))
                    .otherwise(_add_arrays(F.col("o_weekday_counts"), F.col("weekday_counts"))))
        .withColumn("_category_counts", F.when(F.col("o_category_counts").isNull(), F.col("category_counts"))
                    .otherwise(_add_count_maps(F.col("o_category_counts"), F.col("category_counts"))))
        .withColumn("_brand_counts", F.when(F.col("o_brand_counts").isNull(), F.col("brand_counts"))
                    .otherwise(_add_count_maps(F.col("o_brand_counts"), F.col("brand_counts"))))
    )
    first_gap, fix_first = F.col("_first_gap"), F.col("_fix_first")

    def kept(name: str) -> F.Column:
        new = F.col(name)
        if name == "gap_bucket":
            new = F.transform(new, lambda x, i: F.when((i == 0) & fix_first, first_gap).otherwise(x))
        # slice(x, 1, 0): an empty array of x's type, for users new on the day.
        everything = F.concat(F.coalesce(F.col(f"o_{name}"), F.slice(name, 1, 0)), new)
        return F.slice(everything, F.greatest(F.size(everything) - F.lit(length) + 1, F.lit(1)), length)

    # The days history_state keeps: event_date > last_event_date - DAILY_DAYS (= day_date here).
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
        (plus("session_micros") + F.col("_carried_micros")).alias("session_micros"),
        F.col("_hour_counts").alias("hour_counts"),
        F.col("_weekday_counts").alias("weekday_counts"),
        F.col("_category_counts").alias("category_counts"),
        F.col("_brand_counts").alias("brand_counts"),
        C.VOCAB_VERSION,
        *[kept(name).alias(name) for name in vocab.ARRAYS],
    ).select(*_state_columns())


# --------------------------------------------------------------------------- the run


@dataclasses.dataclass(frozen=True)
class StateVersion:
    """Where the state of a source stands: the last day it holds and its vocabulary version."""

    state_date: dt.date
    vocab_version: int


def current_state(spark: SparkSession, cfg: Config, source: str) -> StateVersion | None:
    """The source's state as left by the latest run that changed it (None: no state yet)."""
    if not tables.exists(spark, cfg, C.STATE_RUNS) or not tables.exists(spark, cfg, C.USER_STATE):
        return None
    row = (
        tables.read(spark, cfg, C.STATE_RUNS)
        .filter((F.col(C.SOURCE) == source) & (F.col("mode") != "noop"))
        .orderBy(F.col("finished_at").desc())
        .select(C.STATE_DATE, C.VOCAB_VERSION)
        .first()
    )
    return StateVersion(row[C.STATE_DATE], row[C.VOCAB_VERSION]) if row else None


def missing_step(spark: SparkSession, cfg: Config, source: str, day: dt.date) -> MissingStep | None:
    """The first step missing before the state of ``source`` can hold exactly ``day``, with the
    command that mends it: ingest or sessionize the first day not folded yet when it lacks them,
    else fold it (`seqlake state`); a rebuild when the state is already past ``day``. None when
    the state holds ``day``."""
    held = current_state(spark, cfg, source)
    if held is not None and held.state_date == day:
        return None
    if held is not None and held.state_date > day:
        return MissingStep(day, f"the state of source {source!r} already holds events up to {held.state_date}",
                           f"seqlake state --source {source} --date {day} --rebuild")
    first = day if held is None else held.state_date + dt.timedelta(days=1)
    return sessionize_step(spark, cfg, source, first) or MissingStep(
        first, f"{first} was never folded into the state of source {source!r}",
        f"seqlake state --source {source} --date {first}",
    )


def require_sessionized(spark: SparkSession, cfg: Config, source: str, day: dt.date) -> None:
    """Fail when ``day`` has events that were never sessionized, or was never ingested at all (a
    skipped night: folding it would record an empty day, and its events, ingested later, would
    never reach the state)."""
    if never_sessionized(spark, cfg, source, day) or never_ingested(spark, cfg, source, day):
        raise StateGap(f"the sessionized events of source {source!r} for {day} are missing; "
                       f"{sessionize_step(spark, cfg, source, day)}")


def session_events(spark: SparkSession, cfg: Config, source: str) -> DataFrame:
    return tables.read(spark, cfg, C.SESSION_EVENTS, schemas.SESSION_EVENTS).filter(F.col(C.SOURCE) == source)


def record_encoding_drift(
    spark: SparkSession, cfg: Config, *, run_id: str, source: str, day: dt.date, vocabulary: vocab.Vocabulary
) -> None:
    """run_metrics for the day: the share of its events in the null index and the OOV buckets of
    the state's vocabulary, per feature (a catalogue drifting away from the vocabulary shows here)."""
    day_events = session_events(spark, cfg, source).filter(F.col(C.EVENT_DATE) == F.lit(day))
    encoded = vocab.with_encoded_tokens(day_events, vocabulary).select(
        *[F.col(vocab.ENC_PREFIX + c).alias(c) for c in vocab.ENCODED]
    )
    counts = encoded.agg(*vocab.encoded_event_counts(encoded, vocabulary)).first().asDict()
    rows = vocab.metrics_rows(run_id, C.STAGE_STATE, source, day, vocabulary, counts)
    vocab.write_metrics(spark, cfg, rows, stage_name=C.STAGE_STATE, source=source, run_date=day)
    log.info("[state] %s OOV share by feature: %s", day, {r[5]: round(r[10], 4) for r in rows})


def update_state(
    spark: SparkSession,
    cfg: Config,
    *,
    source: str,
    day: dt.date,
    rebuild: bool = False,
    vocab_version: int | None = None,
) -> StateResult:
    """Bring the state of ``source`` up to ``day`` (see the module docstring).

    A bootstrap or rebuild encodes with ``vocab_version`` (default: the latest); a nightly fold
    keeps the state's version, and refuses a different explicit one.
    """
    run_id = f"state-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    started_at = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    length = cfg.sequences.length
    current = current_state(spark, cfg, source)
    path = cfg.table_path(C.USER_STATE)
    events_in = 0
    if rebuild or current is None:
        mode = "rebuild" if rebuild else "bootstrap"
        require_sessionized(spark, cfg, source, day)
        vocabulary = vocab.load(spark, cfg, source, vocab_version)
        with stage(f"state: {mode} from all history up to {day} (vocab_version {vocabulary.version})"):
            history = session_events(spark, cfg, source).filter(F.col(C.EVENT_DATE) <= F.lit(day))
            built = history_state(vocab.with_encoded_tokens(history, vocabulary), length=length,
                                  vocab_version=vocabulary.version)
            tables.create_if_absent(built, cfg, C.USER_STATE, [C.SOURCE])  # with its data contract
            (
                built.write.format("delta")
                .mode("overwrite")
                .option("replaceWhere", f"source = '{source}'")
                .partitionBy(C.SOURCE)
                .save(path)
            )
            # Deletion vectors: a nightly MERGE then writes the changed users' rows only,
            # instead of rewriting every file that holds one of them (all files, in practice).
            spark.sql(f"ALTER TABLE delta.`{path}` SET TBLPROPERTIES ('delta.enableDeletionVectors' = 'true')")
    elif day <= current.state_date:
        mode, vocabulary = "noop", None
        log.info("[state] %s already holds %s (state date %s): nothing to do", source, day, current.state_date)
    elif day == current.state_date + dt.timedelta(days=1):
        mode = "incremental"
        if vocab_version is not None and vocab_version != current.vocab_version:
            raise StateGap(
                f"the state of source {source!r} is encoded with vocab_version {current.vocab_version}, "
                f"not {vocab_version}; use `seqlake state --rebuild --vocab-version {vocab_version}`"
            )
        require_sessionized(spark, cfg, source, day)
        vocabulary = vocab.load(spark, cfg, source, current.vocab_version)
        with stage(f"state: fold {day} into the state of {current.state_date}"):
            day_events = session_events(spark, cfg, source).filter(F.col(C.EVENT_DATE) == F.lit(day))
            # Only the day's users' old rows take part: a broadcast semi-join streams the state
            # once instead of shuffling every user's row into the join.
            day_users = F.broadcast(day_events.select(*KEY).distinct())
            old = (
                tables.read(spark, cfg, C.USER_STATE)
                .filter(F.col(C.SOURCE) == source)
                .join(day_users, on=KEY, how="left_semi")
            )
            day_rows = day_state(vocab.with_encoded_tokens(day_events, vocabulary), length=length,
                                 vocab_version=vocabulary.version)
            target = DeltaTable.forPath(spark, path)
            (
                target.alias("t")
                .merge(combine_states(day_rows, old, day_date=day, length=length).alias("s"),
                       f"t.source = '{source}' AND t.source = s.source AND t.user_id = s.user_id")
                # A user's state never moves backwards (defence against a replayed day).
                .whenMatchedUpdateAll(condition="t.last_event_date < s.last_event_date")
                .whenNotMatchedInsertAll()
                .execute()
            )
    else:
        raise StateGap(
            f"the state of source {source!r} holds events up to {current.state_date}, so {day} cannot be "
            f"folded in yet; {missing_step(spark, cfg, source, day)} (then the days after it in order; "
            f"or recompute with --rebuild)"
        )
    if vocabulary is not None:
        events_in = session_events(spark, cfg, source).filter(
            F.col(C.EVENT_DATE) <= F.lit(day) if mode != "incremental" else F.col(C.EVENT_DATE) == F.lit(day)
        ).count()
        record_encoding_drift(spark, cfg, run_id=run_id, source=source, day=day, vocabulary=vocabulary)
    # Counted from the table, not taken from this run's commit: the record describes the data
    # whatever point a kill hit. A rerun after a run killed between its MERGE and this record
    # changes nothing (the MERGE's guard), yet the day's users are folded; and the table's latest
    # commit need not be this run's (housekeeping, another source). After a fold of `day`, its
    # users are exactly those whose last event is on `day`; a bootstrap or rebuild wrote them all.
    counts = tables.read(spark, cfg, C.USER_STATE).filter(F.col(C.SOURCE) == source).agg(
        F.count(F.lit(1)).alias("total"),
        F.count(F.when(F.col("last_event_date") == F.lit(day), True)).alias("folded"),
    ).first()
    users_total = counts["total"]
    users_updated = {"noop": 0, "incremental": counts["folded"]}.get(mode, users_total)
    log.info("[state] %s %s: %s users updated, %s in the state", source, mode, users_updated, users_total)
    state_date = day if mode != "noop" else current.state_date
    version = vocabulary.version if vocabulary is not None else current.vocab_version
    result = StateResult(run_id, source, state_date, mode, version, events_in, users_updated, users_total)
    row = (run_id, source, state_date, mode, version, events_in, users_updated, users_total, started_at,
           dt.datetime.now(dt.timezone.utc).replace(tzinfo=None))
    tables.append(spark.createDataFrame([row], schemas.STATE_RUNS), cfg, C.STATE_RUNS)
    return result
