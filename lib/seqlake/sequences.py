"""Fixed-length encoded user sequences with leak-free labels: the ``user_sequences`` table.

A snapshot at cutoff C (a date; the cutoff instant is 00:00 UTC of C) has one row per user
with at least one event before C:
- the user's last ``sequences.length`` events before C, in time order, as integer arrays
  left-padded with 0 (event type, item, category, brand, price bucket, time-gap bucket, and a
  session-start flag), encoded with one vocabulary version (``vocab``);
- aggregates over the user's whole history before C (recency, frequency, monetary, sessions,
  active days, carts and purchases in the last 7 and 30 days);
- the label: 1 if the user purchases in [C, C + horizon_days), null for scoring snapshots;
- a split (train / validation / test) by a hash of (source, user_id), the same at every cutoff.

The table is partitioned by (source, snapshot_date, split), with up to
``sequences.files_per_snapshot`` Parquet files per split, so Petastorm readers of one split
(``dataset.py``) list exactly that split's files and can shard them over training workers.

Nothing at or after C enters an input column: training snapshots build the user state from
events with event_date < C only, and scoring snapshots read the nightly ``user_state`` as of
C - 1. Both go through ``sequences_from_state``, so they encode identically.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import uuid

import pyspark.sql.functions as F
from pyspark.sql import Column, DataFrame, Observation, SparkSession

from seqlake import constants as C
from seqlake import schemas, state, tables
from seqlake.config import Config
from seqlake.progress import stage
from seqlake.sessionize import missing_step, sessionized_through
from seqlake.vocab import (ARRAYS, ENCODED, FIRST_OOV, NULL, Vocabulary, metrics_rows, with_encoded_tokens,
                           write_metrics)

_SPLIT_BUCKETS = 10_000


class LabelHorizonNotCovered(RuntimeError):
    """A training snapshot's label window reaches past the sessionized data."""


@dataclasses.dataclass(frozen=True)
class SnapshotResult:
    source: str
    snapshot_date: dt.date
    vocab_version: int
    users: int
    positives: int | None
    by_split: dict[str, int]
    oov_share: dict[str, float]
    null_share: dict[str, float]


# --------------------------------------------------------------------------- transformations


def split_of(source: Column, user_id: Column, *, validation_share: float, test_share: float) -> Column:
    """train / validation / test from a hash of (source, user_id): stable across cutoffs and runs."""
    u = F.pmod(F.xxhash64(F.lit("split"), source, user_id), F.lit(_SPLIT_BUCKETS)) / F.lit(float(_SPLIT_BUCKETS))
    return (
        F.when(u < F.lit(test_share), F.lit("test"))
        .when(u < F.lit(test_share + validation_share), F.lit("validation"))
        .otherwise(F.lit("train"))
    )


def _sum_recent_days(daily: Column, cutoff: dt.date, days: int, field: str) -> Column:
    since = cutoff - dt.timedelta(days=days)
    kept = F.filter(daily, lambda d: (d[C.EVENT_DATE] >= F.lit(since)) & (d[C.EVENT_DATE] < F.lit(cutoff)))
    return F.aggregate(kept, F.lit(0).cast("long"), lambda acc, d: acc + d[field])


def sequences_from_state(
    user_state: DataFrame,
    *,
    cutoff: dt.date,
    vocabulary: Vocabulary,
    length: int,
    horizon_days: int,
    validation_share: float,
    test_share: float,
    observation: Observation | None = None,
) -> DataFrame:
    """``user_sequences`` rows (label null) from state rows whose events all precede ``cutoff``
    and are encoded with ``vocabulary``: arrays left-padded with 0 to ``length``.

    With ``observation``, the null and OOV hits of the encoded events are observed during the
    write.
    """
    cutoff_ts = dt.datetime.combine(cutoff, dt.time())

    def padded(name: str) -> Column:
        return F.concat(F.array_repeat(F.lit(0), F.lit(length) - F.size(name)), F.col(name))

    if observation is not None:
        user_state = user_state.observe(observation, *encoded_array_counts(vocabulary))
    return user_state.select(
        *state.KEY,
        F.lit(cutoff).alias(C.SNAPSHOT_DATE),
        C.VOCAB_VERSION,
        F.size("item").cast("int").alias("length"),
        *[padded(name).alias(name) for name in ARRAYS],
        ((F.unix_micros(F.lit(cutoff_ts)) - F.unix_micros("last_ts")) / F.lit(86_400_000_000.0)).alias("recency_days"),
        F.col("n_purchases").alias("frequency"),
        F.col("monetary").cast("double").alias("monetary"),
        "n_events",
        "n_sessions",
        "active_days",
        _sum_recent_days(F.col("daily"), cutoff, 7, "carts").alias("carts_7d"),
        _sum_recent_days(F.col("daily"), cutoff, 7, "purchases").alias("purchases_7d"),
        _sum_recent_days(F.col("daily"), cutoff, 30, "carts").alias("carts_30d"),
        _sum_recent_days(F.col("daily"), cutoff, 30, "purchases").alias("purchases_30d"),
        F.lit(None).cast("int").alias("label"),
        F.lit(horizon_days).alias("horizon_days"),
        split_of(F.col(C.SOURCE), F.col(C.USER_ID), validation_share=validation_share,
                 test_share=test_share).alias("split"),
    ).select(*[f.name for f in schemas.USER_SEQUENCES.fields])


def encoded_array_counts(vocabulary: Vocabulary) -> list[Column]:
    """Aggregates over state rows: events, and per feature the events at the null index and in
    the OOV buckets (the same names as ``vocab.encoded_event_counts``)."""
    def hits(name: str, predicate) -> Column:
        return F.sum(F.aggregate(name, F.lit(0).cast("long"), lambda acc, v: acc + predicate(v).cast("long")))

    counts = [F.sum(F.size("item")).cast("long").alias("events")]
    for column, feature in ENCODED.items():
        k = vocabulary.oov_buckets[feature]
        counts.append(hits(column, lambda v: v == NULL).alias(f"{feature}__null"))
        counts.append(hits(column, lambda v: (v >= FIRST_OOV) & (v < FIRST_OOV + k)).alias(f"{feature}__oov"))
    return counts


def with_labels(sequences: DataFrame, future_events: DataFrame, *, cutoff: dt.date, horizon_days: int) -> DataFrame:
    """Set ``label``: 1 if the user has a purchase in [cutoff, cutoff + horizon_days), else 0."""
    end = cutoff + dt.timedelta(days=horizon_days)
    buyers = (
        future_events.filter(
            (F.col(C.EVENT_TYPE) == "purchase")
            & (F.col(C.EVENT_DATE) >= F.lit(cutoff))
            & (F.col(C.EVENT_DATE) < F.lit(end))
        )
        .select(*state.KEY)
        .distinct()
        .withColumn("_buyer", F.lit(1))
    )
    return (
        sequences.join(buyers, on=state.KEY, how="left")
        .withColumn("label", F.coalesce(F.col("_buyer"), F.lit(0)).cast("int"))
        .select(*[f.name for f in schemas.USER_SEQUENCES.fields])
    )


# --------------------------------------------------------------------------- the run


def cutoffs_between(first: dt.date, last: dt.date, every_days: int) -> list[dt.date]:
    days = (last - first).days
    return [first + dt.timedelta(days=d) for d in range(0, days + 1, every_days)]


def labelled_cutoffs(until: dt.date, horizon_days: int, every_days: int, count: int) -> list[dt.date]:
    """The ``count`` latest cutoffs, ``every_days`` apart, whose label horizon
    [cutoff, cutoff + horizon_days) ends by ``until`` (the last day with data), oldest first."""
    last = until - dt.timedelta(days=horizon_days - 1)
    return [last - dt.timedelta(days=every_days * k) for k in reversed(range(count))]


def build_snapshot(
    spark: SparkSession,
    cfg: Config,
    *,
    source: str,
    cutoff: dt.date,
    vocabulary: Vocabulary,
    scoring: bool = False,
) -> SnapshotResult:
    """Write the ``user_sequences`` snapshot of ``source`` at ``cutoff`` (replacing it).

    Training snapshots (labelled) are built from history; scoring snapshots (label null) from
    ``user_state``, which must hold exactly the day before the cutoff.
    """
    settings = cfg.sequences
    run_id = f"sequences-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    day_before = cutoff - dt.timedelta(days=1)
    if scoring:
        held = state.current_state(spark, cfg, source)
        if held is None or held.state_date != day_before:
            raise state.StateGap(
                f"a scoring snapshot at {cutoff} needs the state of source {source!r} as of {day_before}, "
                f"but it holds {held.state_date if held else 'nothing'}; "
                f"{state.missing_step(spark, cfg, source, day_before)}"
            )
        if held.vocab_version != vocabulary.version:
            raise state.StateGap(
                f"the state of source {source!r} is encoded with vocab_version {held.vocab_version}, the "
                f"snapshot asks for {vocabulary.version}; run `seqlake state --source {source} --date "
                f"{day_before} --rebuild --vocab-version {vocabulary.version}`"
            )
        user_state = tables.read(spark, cfg, C.USER_STATE).filter(F.col(C.SOURCE) == source)
    else:
        last_needed = cutoff + dt.timedelta(days=settings.horizon_days - 1)
        through = sessionized_through(spark, cfg, source)
        if through is None or through < last_needed:
            step = missing_step(spark, cfg, source, last_needed)
            raise LabelHorizonNotCovered(
                f"the label of a snapshot at {cutoff} needs sessionized events of source {source!r} up to "
                f"{last_needed} (sequences.horizon_days={settings.horizon_days}), but they reach "
                f"{through or 'no day'}; " + (f"{step}, " if step else "")
                + "or pick an earlier cutoff, or --scoring for an unlabelled snapshot"
            )
        state.require_sessionized(spark, cfg, source, day_before)
        history = state.session_events(spark, cfg, source).filter(F.col(C.EVENT_DATE) < F.lit(cutoff))
        user_state = state.history_state(
            with_encoded_tokens(history, vocabulary), length=settings.length, vocab_version=vocabulary.version
        )

    observation = Observation(f"encoding-{cutoff}")
    rows = sequences_from_state(
        user_state, cutoff=cutoff, vocabulary=vocabulary, length=settings.length,
        horizon_days=settings.horizon_days, validation_share=settings.validation_share,
        test_share=settings.test_share, observation=observation,
    )
    if not scoring:
        future = state.session_events(spark, cfg, source)
        rows = with_labels(rows, future, cutoff=cutoff, horizon_days=settings.horizon_days)
    where = f"source = '{source}' AND snapshot_date = '{cutoff}'"
    with stage(f"sequences: snapshot {cutoff} ({'scoring' if scoring else 'training'})") as info:
        tables.create_if_absent(rows, cfg, C.USER_SEQUENCES, [C.SOURCE, C.SNAPSHOT_DATE, "split"])
        (
            rows.repartition(settings.files_per_snapshot, *state.KEY)
            .write.format("delta")
            .mode("overwrite")
            .option("replaceWhere", where)
            # Petastorm reads row group by row group: a few MB each keeps its memory bounded.
            .option("parquet.block.size", settings.row_group_mb * 1024 * 1024)
            # split as a partition: a training reader lists exactly its split's files.
            .partitionBy(C.SOURCE, C.SNAPSHOT_DATE, "split")
            .save(cfg.table_path(C.USER_SEQUENCES))
        )
        written = tables.read(spark, cfg, C.USER_SEQUENCES).filter(where)
        summary = written.groupBy("split").agg(
            F.count(F.lit(1)).alias("n"), F.sum("label").alias("positives")
        ).collect()  # at most three rows
        by_split = {r["split"]: r["n"] for r in summary}
        positives = None if scoring else sum(r["positives"] or 0 for r in summary)
        users = sum(by_split.values())
        info.update(users=users, positives=positives if positives is not None else "n/a")
    counts = observation.get
    metric_rows = metrics_rows(run_id, C.STAGE_SEQUENCES, source, cutoff, vocabulary, counts)
    write_metrics(spark, cfg, metric_rows, stage_name=C.STAGE_SEQUENCES, source=source, run_date=cutoff)
    oov = {r[5]: r[10] for r in metric_rows}
    nulls = {r[5]: r[9] for r in metric_rows}
    return SnapshotResult(source, cutoff, vocabulary.version, users, positives, by_split, oov, nulls)
