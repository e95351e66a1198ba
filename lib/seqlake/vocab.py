"""Versioned vocabularies for the categorical features, and the fixed numeric buckets.

Index contract (one per feature; docs/design.md, "Encoding"):

    0                       padding (left of a sequence shorter than sequences.length)
    1                       null / missing value
    2 .. 1 + K              K hashed out-of-vocabulary buckets: 2 + pmod(xxhash64(token), K)
    2 + K ..                vocabulary tokens, in the order they entered the vocabulary

K (``vocab.<feature>.oov_buckets``) is fixed for the life of a source's vocabulary. A fit keeps
every token of the previous version at its index and appends the tokens seen at least
``min_count`` times in the fit window that are not in it yet, most frequent first (ties by
token), until the vocabulary holds ``max_size`` tokens; later newcomers hash into the OOV
buckets. A fit that adds nothing writes no new version. Models record the vocab_version they
were trained with and scoring encodes with exactly that version.

Numeric buckets are fixed (never fitted), powers of two:

    price_bucket   0 padding, 1 null, 2 price < 1, 3 + k for 2^k <= price < 2^(k+1) (k = 0..15),
                   19 for price >= 65536                                     (20 ids)
    gap_bucket     0 padding, 1 no previous event, 2 gap < 1 s, 3 + k for 2^k <= gap s < 2^(k+1)
                   (k = 0..20, up to ~12 days), 24 for gaps >= 2^21 s (~24 days)   (25 ids)
"""
from __future__ import annotations

import dataclasses
import datetime as dt

import pyspark.sql.functions as F
from pyspark.sql import Column, DataFrame, SparkSession, Window

from seqlake import constants as C
from seqlake import schemas, tables
from seqlake.config import VOCAB_FEATURES, Config, ConfigError, VocabFeatureConfig
from seqlake.progress import log

# Encoded columns (user_sequences arrays) and the vocabulary feature behind each.
ENCODED = {"event_type": "event_type", "item": "item_id", "category": "category_id", "brand": "brand"}
# Every per-event array of user_state and user_sequences, in order.
ARRAYS = ("event_type", "item", "category", "brand", "price_bucket", "gap_bucket", "session_start")
ENC_PREFIX = "enc_"

PAD = 0
NULL = 1
FIRST_OOV = 2

PRICE_POWERS = 17  # boundaries 2^0 .. 2^16
GAP_POWERS = 22  # boundaries 2^0 .. 2^21 seconds
PRICE_BUCKETS = 2 + 1 + PRICE_POWERS  # ids 0..19
GAP_BUCKETS = 2 + 1 + GAP_POWERS  # ids 0..24


class VocabMissing(RuntimeError):
    """No vocabulary (or not the requested version) exists for the source."""


@dataclasses.dataclass(frozen=True)
class FitResult:
    source: str
    vocab_version: int
    created: bool
    tokens: dict[str, int]
    new_tokens: dict[str, int]


# --------------------------------------------------------------------------- buckets


def _power_bucket(value: Column, powers: int) -> Column:
    """2 + the number of boundaries 2^0 .. 2^(powers-1) that ``value`` reaches (exact: no log)."""
    steps = [F.when(value >= F.lit(float(2**k)), 1).otherwise(0) for k in range(powers)]
    total = steps[0]
    for step in steps[1:]:
        total = total + step
    return (F.lit(FIRST_OOV) + total).cast("int")


def price_bucket(price: Column) -> Column:
    return F.when(price.isNull(), F.lit(NULL)).otherwise(_power_bucket(price, PRICE_POWERS)).cast("int")


def gap_bucket(ts: Column, prev_ts: Column) -> Column:
    seconds = (F.unix_micros(ts) - F.unix_micros(prev_ts)) / F.lit(1_000_000.0)
    return F.when(prev_ts.isNull(), F.lit(NULL)).otherwise(_power_bucket(seconds, GAP_POWERS)).cast("int")


def oov_index(token: Column, oov_buckets: int) -> Column:
    """The OOV bucket of a token: stable across runs, machines and Spark versions (xxhash64)."""
    return (F.lit(FIRST_OOV) + F.pmod(F.xxhash64(token), F.lit(oov_buckets))).cast("int")


def encode(df: DataFrame, column: str, *, out: str, lookup: DataFrame, oov_buckets: int) -> DataFrame:
    """Add ``out``: the index of ``column`` under the contract above.

    ``lookup`` is one feature's vocabulary (token, index) of one version; it is broadcast, so
    ``max_size`` bounds the memory each task needs.
    """
    tok, idx = f"_tok_{out}", f"_idx_{out}"
    small = F.broadcast(lookup.select(F.col("token").alias(tok), F.col("index").alias(idx)))
    return (
        df.join(small, on=df[column] == small[tok], how="left")
        .withColumn(
            out,
            F.when(F.col(column).isNull(), F.lit(NULL))
            .when(F.col(idx).isNotNull(), F.col(idx))
            .otherwise(oov_index(F.col(column), oov_buckets))
            .cast("int"),
        )
        .drop(tok, idx)
    )


# --------------------------------------------------------------------------- drift metrics


def metrics_rows(
    run_id: str, stage_name: str, source: str, run_date: dt.date, vocabulary: Vocabulary, counts: dict
) -> list[tuple]:
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    total = int(counts.get("events") or 0)
    rows = []
    for feature in VOCAB_FEATURES:
        n_null = int(counts.get(f"{feature}__null") or 0)
        n_oov = int(counts.get(f"{feature}__oov") or 0)
        rows.append((run_id, stage_name, source, run_date, vocabulary.version, feature, total, n_null, n_oov,
                     n_null / total if total else 0.0, n_oov / total if total else 0.0, now))
    return rows


def write_metrics(spark: SparkSession, cfg: Config, rows: list[tuple], *, stage_name: str, source: str,
                  run_date: dt.date) -> None:
    """Replace the run date's metrics of this stage (a rerun leaves one set, not two)."""
    df = spark.createDataFrame(rows, schemas.RUN_METRICS)
    tables.replace_where(
        df, cfg, C.RUN_METRICS,
        f"stage = '{stage_name}' AND source = '{source}' AND run_date = '{run_date}'",
        partition_by=["stage"],
        # Runs of one stage for different dates (two snapshots at once) share a partition here.
        conflict_retries=3,
    )


def encoded_event_counts(encoded: DataFrame, vocabulary: Vocabulary) -> list[Column]:
    """Aggregates over one-row-per-event encoded data: events, and per feature null and OOV hits."""
    metrics = [F.count(F.lit(1)).alias("events")]
    for column, feature in ENCODED.items():
        k = vocabulary.oov_buckets[feature]
        metrics.append(F.sum((F.col(column) == NULL).cast("long")).alias(f"{feature}__null"))
        metrics.append(F.sum(((F.col(column) >= FIRST_OOV) & (F.col(column) < FIRST_OOV + k)).cast("long"))
                       .alias(f"{feature}__oov"))
    return metrics


def with_encoded_tokens(events: DataFrame, vocabulary: "Vocabulary") -> DataFrame:
    """Add ``enc_<array>`` for every array but gap_bucket (it needs the user's previous event):
    the four vocabulary features, the price bucket and the session-start flag."""
    out = events
    for column, feature in ENCODED.items():
        out = encode(out, feature, out=ENC_PREFIX + column, lookup=vocabulary.lookup(feature),
                     oov_buckets=vocabulary.oov_buckets[feature])
    return out.withColumn(ENC_PREFIX + "price_bucket", price_bucket(F.col("price"))).withColumn(
        ENC_PREFIX + "session_start", F.col("is_session_start").cast("int")
    )


# --------------------------------------------------------------------------- versions


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """One version of a source's vocabularies: lookups and the parameters they were fitted with."""

    source: str
    version: int
    tokens: DataFrame  # rows of schemas.VOCAB for this version
    oov_buckets: dict[str, int]
    cardinality: dict[str, int]

    def lookup(self, feature: str) -> DataFrame:
        return self.tokens.filter(F.col("feature") == feature).select("token", "index")


def latest_version(spark: SparkSession, cfg: Config, source: str) -> int | None:
    if not tables.exists(spark, cfg, C.VOCAB_VERSIONS):
        return None
    row = (
        tables.read(spark, cfg, C.VOCAB_VERSIONS)
        .filter(F.col(C.SOURCE) == source)
        .agg(F.max(C.VOCAB_VERSION).alias("v"))
        .first()
    )
    return row["v"]


def load(spark: SparkSession, cfg: Config, source: str, version: int | None = None) -> Vocabulary:
    """The vocabulary ``version`` of ``source`` (default: the latest)."""
    if version is None:
        version = latest_version(spark, cfg, source)
        if version is None:
            raise VocabMissing(
                f"no vocabulary for source {source!r} in {cfg.table_path(C.VOCAB_VERSIONS)}; "
                f"run `seqlake vocab fit --source {source} --date YYYY-MM-DD` first"
            )
    meta = (
        tables.read(spark, cfg, C.VOCAB_VERSIONS, schemas.VOCAB_VERSIONS)
        .filter((F.col(C.SOURCE) == source) & (F.col(C.VOCAB_VERSION) == version))
        .select("feature", "oov_buckets", "cardinality")
        .collect()  # one row per feature
    )
    if not meta:
        raise VocabMissing(f"vocabulary version {version} of source {source!r} does not exist")
    tokens = tables.read(spark, cfg, C.VOCAB).filter(
        (F.col(C.SOURCE) == source) & (F.col(C.VOCAB_VERSION) == version)
    )
    return Vocabulary(
        source, version, tokens,
        {r["feature"]: r["oov_buckets"] for r in meta},
        {r["feature"]: r["cardinality"] for r in meta},
    )


# --------------------------------------------------------------------------- fitting


def fit_feature(
    events: DataFrame, previous: DataFrame, *, feature: str, settings: VocabFeatureConfig, size_before: int
) -> DataFrame:
    """One feature's next vocabulary (token, index, count, first_seen) from ``events`` (the fit
    window) and ``previous`` (the feature's rows of the latest version, ``size_before`` of them;
    may be empty).

    Existing tokens keep their index; new ones are appended, most frequent first.
    """
    counts = (
        events.filter(F.col(feature).isNotNull())
        .groupBy(F.col(feature).alias("token"))
        .agg(F.count(F.lit(1)).alias("count"), F.min(C.EVENT_DATE).alias("seen"))
    )
    prev = previous.select("token", F.col("index").alias("prev_index"), F.col("first_seen").alias("prev_first_seen"))
    merged = counts.join(prev, on="token", how="full_outer")
    kept = merged.filter(F.col("prev_index").isNotNull()).select(
        "token",
        F.col("prev_index").alias("index"),
        F.coalesce("count", F.lit(0)).cast("long").alias("count"),
        F.least(F.col("prev_first_seen"), F.coalesce("seen", F.col("prev_first_seen"))).alias("first_seen"),
    )
    first_new = FIRST_OOV + settings.oov_buckets
    room = max(settings.max_size - size_before, 0)
    # A distributed top-`room` first; then one partition numbers at most `room` (<= max_size)
    # rows, on purpose (conf/log4j2.properties quiets Spark's warning about it).
    order = [F.col("count").desc(), F.col("token")]
    ranked = (
        merged.filter(F.col("prev_index").isNull() & (F.col("count") >= settings.min_count))
        .orderBy(*order)
        .limit(room)
        .withColumn("_rank", F.row_number().over(Window.orderBy(*order)))
        .select(
            "token",
            (F.lit(first_new + size_before - 1) + F.col("_rank")).cast("int").alias("index"),
            F.col("count").cast("long"),
            F.col("seen").alias("first_seen"),
        )
    )
    return kept.unionByName(ranked)


def fit(
    spark: SparkSession, cfg: Config, *, source: str, fit_from: dt.date, fit_to: dt.date
) -> FitResult:
    """Fit the next vocabulary version of ``source`` on its sessionized events in [fit_from, fit_to]."""
    events = tables.read(spark, cfg, C.SESSION_EVENTS, schemas.SESSION_EVENTS).filter(
        (F.col(C.SOURCE) == source) & F.col(C.EVENT_DATE).between(F.lit(fit_from), F.lit(fit_to))
    )
    if events.limit(1).count() == 0:
        raise VocabMissing(f"no sessionized events of source {source!r} in {fit_from}..{fit_to} to fit on")
    previous_version = latest_version(spark, cfg, source)
    previous = load(spark, cfg, source, previous_version) if previous_version is not None else None
    version = (previous_version or 0) + 1
    events = events.select(C.EVENT_DATE, *VOCAB_FEATURES).persist()
    cached: list[DataFrame] = []
    try:
        parts, summary = [], []
        for feature in VOCAB_FEATURES:
            settings = cfg.vocab.feature(feature)
            if previous is not None and previous.oov_buckets.get(feature, settings.oov_buckets) != settings.oov_buckets:
                raise ConfigError(
                    f"vocab.{feature}.oov_buckets: is {settings.oov_buckets} but vocabulary version "
                    f"{previous.version} of {source!r} uses {previous.oov_buckets[feature]}; changing it "
                    f"would move every token's index (start a new lake or keep the value)"
                )
            prev_rows = (
                previous.tokens.filter(F.col("feature") == feature)
                if previous is not None
                else spark.createDataFrame([], schemas.VOCAB)
            )
            before = prev_rows.count()
            fitted = fit_feature(events, prev_rows, feature=feature, settings=settings, size_before=before).persist()
            cached.append(fitted)
            stats = fitted.agg(
                F.count(F.lit(1)).alias("tokens"), F.max("index").alias("max_index")
            ).first()
            tokens = stats["tokens"]
            cardinality = (stats["max_index"] + 1) if stats["max_index"] is not None else FIRST_OOV + settings.oov_buckets
            parts.append(fitted.select(
                F.lit(source).alias("source"), F.lit(version).alias("vocab_version"),
                F.lit(feature).alias("feature"), "token", "index", "count", "first_seen",
            ))
            summary.append((feature, settings, tokens, tokens - before, cardinality))
        new_tokens = {f: n for f, _, _, n, _ in summary}
        tokens_by_feature = {f: t for f, _, t, _, _ in summary}
        if previous is not None and not any(new_tokens.values()):
            log.info("[vocab] no new tokens in %s..%s: version %d stays current", fit_from, fit_to, previous.version)
            return FitResult(source, previous.version, False, tokens_by_feature, new_tokens)
        rows = parts[0]
        for part in parts[1:]:
            rows = rows.unionByName(part)
        where = f"source = '{source}' AND vocab_version = {version}"
        tables.replace_where(rows.select(*[f.name for f in schemas.VOCAB.fields]), cfg, C.VOCAB, where,
                             partition_by=[C.SOURCE, C.VOCAB_VERSION])
        now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        meta = spark.createDataFrame(
            [
                (source, version, f, fit_from, fit_to, s.oov_buckets, s.min_count, s.max_size, t, n, card, now)
                for f, s, t, n, card in summary
            ],
            schemas.VOCAB_VERSIONS,
        )
        # Written last: a version exists for readers only once its tokens are committed.
        tables.append(meta, cfg, C.VOCAB_VERSIONS)
        return FitResult(source, version, True, tokens_by_feature, new_tokens)
    finally:
        events.unpersist()
        for df in cached:
            df.unpersist()
