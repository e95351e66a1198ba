"""Nightly scoring: ``user_propensity`` for a score date D, with reasons and monitoring.

``score(spark, cfg, source=S, day=D)``:

1. The model behind the ``champion`` alias of ``mlflow.registered_model`` and the vocab
   version it was trained with (a model version tag). No champion, a champion of another
   source, a vocab version missing from ``vocab_versions``, or a ``user_state`` that does not
   hold D encoded with that version: ``ScoringRefused`` with what to do, and nothing is written.
2. Inputs: the ``user_state`` rows of users whose last event is in the ``scoring.lookback_days``
   days ending with D, turned into model inputs by ``sequences.sequences_from_state`` at cutoff
   D + 1 (the same code as every snapshot: no training/serving skew, no history scan).
3. ``mapInArrow`` over Arrow batches of ``scoring.batch_rows``: each Python worker loads the
   model once (``_model``, a per-process cache; the model directory is shipped with
   ``SparkContext.addFile``, so executors need no access to the MLflow store) and scores a
   batch in one forward pass, plus one pass over the batch's occluded copies for the reasons.
   Inputs are hash-partitioned and sorted by user, so a rerun forms the same batches and gives
   the same floats.
4. Rank (1 = highest propensity, ties by user_id) and decile within the day, computed without
   a single-partition window: a range-partitioned sort, then per-partition offsets.
5. Written with ``replaceWhere`` on (source, score_date): a rerun replaces the day.
6. Monitoring: users scored, score mean and quantiles, PSI against the previous scoring day,
   OOV shares per feature (``run_metrics``, stage ``score``), share of users with no event the
   vocabulary knows; thresholds in ``scoring.warn_*`` turn them into warnings. One row per run
   in ``score_runs`` and one MLflow run in ``mlflow.scoring_experiment`` (with plots).

Reasons (occlusion): the user's events are grouped by (event type, category); for the newest
``explain_max_groups`` groups the model is run again with that group's events removed (every
id of those positions set to padding, which masks them; the gaps stay, so other events keep
their ages). The drop in propensity is the group's impact; the three largest impacts of at
least ``explain_min_impact`` become reasons such as "carted category 2053 twice in the last
2 days". Aggregate features are not occluded: reasons name events only. ``within_days`` is an
upper bound from the gap buckets (a gap is below its bucket's upper bound), so "in the last k
days" is true; gaps over 24 days (the top bucket) count as 48.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import math
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterator

import numpy as np
import pyspark.sql.functions as F
import pyspark.sql.types as T
from pyspark.sql import DataFrame, Observation, SparkSession

from seqlake import constants as C
from seqlake import schemas, sequences, state, tables, tracking, vocab
from seqlake.config import Config, ScoringConfig
from seqlake.dataset import AGGREGATES, SEQUENCES
from seqlake.progress import log, stage

MAX_REASONS = 3
# How each event type reads in a reason; {what} is "category X".
PHRASES = {"view": "viewed {what}", "cart": "carted {what}", "remove_from_cart": "removed {what} from the cart",
           "fav": "favourited {what}", "purchase": "bought in {what}"}
QUANTILES = (0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99)


class ScoringRefused(RuntimeError):
    """Scoring cannot run as asked (no champion, missing vocab version, state not at D): nothing written."""


class BrokenScoringInput(RuntimeError):
    """The inputs fail a monitoring check that makes the scores meaningless (e.g. no user to score)."""


@dataclasses.dataclass(frozen=True)
class Champion:
    name: str
    version: str
    run_id: str
    source: str
    vocab_version: int
    horizon_days: int


@dataclasses.dataclass(frozen=True)
class ScoreResult:
    run_id: str
    source: str
    score_date: dt.date
    champion: Champion
    users_scored: int
    mean: float
    quantiles: dict[str, float]
    psi: float | None
    oov_share: dict[str, float]
    empty_share: float
    warnings: tuple[str, ...]
    model_loads: int
    batches: int
    elapsed_seconds: float
    mlflow_run_id: str


# --------------------------------------------------------------------------- champion


def champion(cfg: Config, source: str) -> Champion:
    """The champion model version and its provenance tags; ``ScoringRefused`` if there is none."""
    from mlflow import MlflowClient

    tracking.setup(cfg)
    current = tracking.champion_version(cfg)
    name = cfg.mlflow.registered_model
    if current is None:
        raise ScoringRefused(
            f"no version of model {name!r} holds the alias '{tracking.CHAMPION}' in {cfg.mlflow_tracking_uri()}; "
            f"run `seqlake train --source {source}` (the first model registered becomes champion) or set the "
            f"alias on a version in the MLflow UI"
        )
    tags = current.tags or MlflowClient().get_model_version(name, current.version).tags
    if tags.get("source") != source:
        raise ScoringRefused(
            f"the champion (version {current.version} of {name!r}) was trained on source {tags.get('source')!r}, "
            f"not {source!r}; train one for this source or score with --source {tags.get('source')}"
        )
    if "vocab_version" not in tags:
        raise ScoringRefused(f"the champion (version {current.version} of {name!r}) has no vocab_version tag; "
                             f"retrain it with `seqlake train`")
    return Champion(name, str(current.version), current.run_id, source, int(tags["vocab_version"]),
                    int(tags.get("horizon_days", 0)))


def _check_inputs(spark: SparkSession, cfg: Config, champ: Champion, day: dt.date) -> vocab.Vocabulary:
    try:
        vocabulary = vocab.load(spark, cfg, champ.source, champ.vocab_version)
    except vocab.VocabMissing as exc:
        raise ScoringRefused(
            f"the champion (version {champ.version}) was trained with vocab_version {champ.vocab_version}, "
            f"which the lake does not hold ({exc}); restore it, or retrain on an existing version"
        ) from None
    held = state.current_state(spark, cfg, champ.source)
    if held is None or held.state_date != day:
        raise ScoringRefused(
            f"scoring {day} needs the user state of source {champ.source!r} as of {day}, but it holds "
            f"{held.state_date if held else 'nothing'}; {state.missing_step(spark, cfg, champ.source, day)}"
        )
    if held.vocab_version != champ.vocab_version:
        raise ScoringRefused(
            f"the user state is encoded with vocab_version {held.vocab_version}, the champion "
            f"(version {champ.version}) with {champ.vocab_version}; run `seqlake state --source {champ.source} "
            f"--date {day} --rebuild --vocab-version {champ.vocab_version}`"
        )
    return vocabulary


# --------------------------------------------------------------------------- inputs


def filter_active(user_state: DataFrame, *, day: dt.date, lookback_days: int) -> DataFrame:
    """Users whose last event is in the ``lookback_days`` days ending with ``day``."""
    first = day - dt.timedelta(days=lookback_days - 1)
    return user_state.filter((F.col("last_event_date") >= F.lit(first)) & (F.col("last_event_date") <= F.lit(day)))


def scoring_inputs(user_state: DataFrame, *, day: dt.date, vocabulary: vocab.Vocabulary, cfg: Config,
                   observation: Observation | None = None) -> DataFrame:
    """Model inputs of the users active in the lookback, as of the end of ``day``: the columns of a
    ``user_sequences`` snapshot at cutoff day + 1 (arrays, aggregates), one row per user."""
    rows = sequences.sequences_from_state(
        filter_active(user_state, day=day, lookback_days=cfg.scoring.lookback_days),
        cutoff=day + dt.timedelta(days=1), vocabulary=vocabulary, length=cfg.sequences.length,
        horizon_days=cfg.sequences.horizon_days, validation_share=cfg.sequences.validation_share,
        test_share=cfg.sequences.test_share, observation=observation,
    )
    return rows.select(C.SOURCE, C.USER_ID, "length", *SEQUENCES, *AGGREGATES)


# --------------------------------------------------------------------------- the executors' side

_MODELS: dict[str, object] = {}  # per Python worker: model directory -> loaded Keras model


def _model(path: str, loads, threads: int = 0):
    """The model at ``path``, loaded at most once per Python worker process (Spark reuses workers).
    ``threads`` > 0 caps TensorFlow's thread pools in this process: Spark already runs one Python
    worker per core, and each one using every core only makes them fight."""
    model = _MODELS.get(path)
    if model is None:
        import tensorflow as tf

        if threads > 0:
            try:
                tf.config.threading.set_intra_op_parallelism_threads(threads)
                tf.config.threading.set_inter_op_parallelism_threads(threads)
            except RuntimeError:  # TensorFlow already ran something in this process: keep its pools
                pass
        import mlflow.tensorflow

        model = mlflow.tensorflow.load_model(path)
        model._seqlake_forward = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
        _MODELS[path] = model
        if loads is not None:
            loads.add(1)
    return model


@dataclasses.dataclass(frozen=True)
class Explainer:
    """What the executors need to put reasons into words (small: event types and categories)."""

    event_types: tuple[str, ...]  # index -> token ("" where unused)
    categories: tuple[str | None, ...]  # index -> token (None: padding, null, OOV buckets)
    max_groups: int
    min_impact: float


def batch_arrays(batch, length: int) -> dict[str, np.ndarray]:
    """An Arrow batch (or table) of scoring inputs as the model's input dict. The arrays are
    padded to ``length``, so each list column's flat values reshape to (rows, length) without
    building a Python object per row."""

    def column(name: str):
        values = batch.column(name)
        return values.combine_chunks() if hasattr(values, "combine_chunks") else values

    n = batch.num_rows
    out = {name: column(name).flatten().to_numpy(zero_copy_only=False).astype(np.int32).reshape(n, length)
           for name in SEQUENCES}
    out["aggregates"] = np.stack(
        [column(name).to_numpy(zero_copy_only=False).astype(np.float32) for name in AGGREGATES], axis=1
    ).reshape(n, len(AGGREGATES))
    return out


def age_upper_bound_days(gap_bucket: np.ndarray, recency_days: np.ndarray) -> np.ndarray:
    """(n, length) upper bound of each event's age at the cutoff in days: the newest event's age
    is the exact recency, and each gap after an event is below its bucket's upper bound (bucket
    2: under 1 s; bucket b >= 3: under 2^(b-2) s; the open top bucket is taken as 2^(b-2) too)."""
    b = gap_bucket.astype(np.float64)
    seconds = np.where(b >= 3, np.power(2.0, b - 2), np.where(b == 2, 1.0, 0.0))
    after = np.cumsum(seconds[:, ::-1], axis=1)[:, ::-1] - seconds  # gaps after event i
    return recency_days[:, None] + after / 86_400.0


def _times(n: int) -> str:
    return {1: "once", 2: "twice"}.get(n, f"{n} times")


def reason_text(event_type: str, category: str | None, events: int, within_days: int) -> str:
    what = f"category {category}" if category is not None else "an unlisted category"
    days = "day" if within_days == 1 else f"{within_days} days"
    action = PHRASES.get(event_type, event_type + " {what}").format(what=what)
    return f"{action} {_times(events)} in the last {days}"


def explain(forward, batch: dict[str, np.ndarray], base: np.ndarray, ex: Explainer) -> list[list[dict]]:
    """Up to ``MAX_REASONS`` reasons per row of ``batch`` by occlusion of (event type, category)
    groups (see the module docstring); ``base`` are the rows' propensities."""
    et, cat = batch["event_type"].astype(np.int64), batch["category"].astype(np.int64)
    n, length = et.shape
    present = batch["item"] != 0
    key = np.where(present, et * (cat.max(initial=0) + 1) + cat, -1)
    group = np.full((n, length), -1, dtype=np.int64)
    groups_of: list[list[int]] = []
    for r in range(n):
        seen: dict[int, int] = {}
        for pos in range(length - 1, -1, -1):  # newest first: the newest groups are tried
            k = int(key[r, pos])
            if k < 0:
                continue
            g = seen.get(k)
            if g is None and len(seen) < ex.max_groups:
                g = seen[k] = len(seen)
            if g is not None:
                group[r, pos] = g
        groups_of.append(list(seen.values()))
    g_count = max((len(g) for g in groups_of), default=0)
    if g_count == 0:
        return [[] for _ in range(n)]
    occluded = {}
    for name, values in batch.items():
        if name == "aggregates":
            occluded[name] = np.repeat(values, g_count, axis=0)
            continue
        copies = np.repeat(values[:, None, :], g_count, axis=1)  # (n, G, length)
        if name != "gap_bucket":  # the gaps stay: the other events keep their ages
            hit = group[:, None, :] == np.arange(g_count)[None, :, None]
            copies = np.where(hit, 0, copies)
        occluded[name] = copies.reshape(n * g_count, length).astype(values.dtype)
    impact = base[:, None] - np.asarray(forward(occluded)).reshape(n, g_count)
    ages = age_upper_bound_days(batch["gap_bucket"], batch["aggregates"][:, AGGREGATES.index("recency_days")])
    out: list[list[dict]] = []
    for r in range(n):
        reasons = []
        for g in sorted(groups_of[r], key=lambda g: -impact[r, g])[:MAX_REASONS]:
            if impact[r, g] < ex.min_impact:
                break
            where = group[r] == g
            pos = int(np.argmax(where))  # the group's oldest event
            event_type = ex.event_types[et[r, pos]] if et[r, pos] < len(ex.event_types) else ""
            category = ex.categories[cat[r, pos]] if cat[r, pos] < len(ex.categories) else None
            events = int(where.sum())
            within = max(1, int(math.ceil(float(ages[r, pos]) - 1e-9)))
            reasons.append({"event_type": event_type, "category": category, "events": events,
                            "within_days": within, "impact": float(impact[r, g]),
                            "text": reason_text(event_type, category, events, within)})
        out.append(reasons)
    return out


SCORED = T.StructType([
    T.StructField(C.SOURCE, T.StringType(), False),
    T.StructField(C.USER_ID, T.StringType(), False),
    T.StructField("propensity", T.DoubleType(), False),
    T.StructField("reasons", T.ArrayType(schemas.REASON, False), False),
    T.StructField("empty_input", T.BooleanType(), False),
])


def score_batches(model_dir: str, *, length: int, known_item_from: int, explainer: Explainer | None, loads=None,
                  batches=None, tf_threads: int = 0):
    """The ``mapInArrow`` function: Arrow batches of ``scoring_inputs`` -> rows of ``SCORED``.
    ``empty_input``: no item index at or above ``known_item_from`` (all padding, null or OOV)."""

    def run(record_batches: Iterator) -> Iterator:
        import pyarrow as pa
        from pyspark import SparkFiles

        schema = _arrow_schema()
        model = None
        for batch in record_batches:
            if batch.num_rows == 0:
                continue
            if model is None:
                model = _model(SparkFiles.get(model_dir), loads, tf_threads)
            inputs = batch_arrays(batch, length)
            base = np.asarray(model._seqlake_forward(inputs)).reshape(-1).astype(np.float64)
            if explainer is not None:
                reasons = explain(model._seqlake_forward, inputs, base, explainer)
            else:
                reasons = [[] for _ in range(batch.num_rows)]
            known = (inputs["item"] >= known_item_from).any(axis=1)
            if batches is not None:
                batches.add(1)
            yield pa.RecordBatch.from_arrays(
                [batch.column(C.SOURCE), batch.column(C.USER_ID), pa.array(base, pa.float64()),
                 pa.array(reasons, schema.field("reasons").type), pa.array(~known, pa.bool_())],
                schema=schema,
            )

    return run


def _arrow_schema():
    import pyarrow as pa

    reason = pa.struct([("event_type", pa.string()), ("category", pa.string()), ("events", pa.int32()),
                        ("within_days", pa.int32()), ("impact", pa.float64()), ("text", pa.string())])
    return pa.schema([(C.SOURCE, pa.string()), (C.USER_ID, pa.string()), ("propensity", pa.float64()),
                      ("reasons", pa.list_(reason)), ("empty_input", pa.bool_())])


# --------------------------------------------------------------------------- ranking and metrics


def with_rank_and_decile(scored: DataFrame) -> DataFrame:
    """Add ``rank`` (1 = highest propensity; ties by user_id) and ``decile`` (1..10 by rank) over
    all rows, without funnelling them through one partition: a range-partitioned sort, then each
    partition's row offset from the counts of the partitions before it (one small collect)."""
    ordered = (
        scored.orderBy(F.col("propensity").desc(), F.col(C.USER_ID))
        .withColumn("_part", F.spark_partition_id())
        .withColumn("_local", F.monotonically_increasing_id() - F.shiftleft(F.spark_partition_id().cast("long"), 33))
        .localCheckpoint(eager=True)  # the counts and the ranks must see the same partitioning
    )
    counts = {r["_part"]: r["n"] for r in ordered.groupBy("_part").agg(F.count(F.lit(1)).alias("n")).collect()}
    total = sum(counts.values())
    offsets, running = [], 0
    for part in range(max(counts, default=-1) + 1):
        offsets.append(running)
        running += counts.get(part, 0)
    offset = F.element_at(F.array(*[F.lit(o).cast("long") for o in offsets] or [F.lit(0).cast("long")]),
                          F.col("_part") + 1)
    rank = offset + F.col("_local") + 1
    return (
        ordered.withColumn("rank", rank)
        .withColumn("decile", F.ceil(F.col("rank") * F.lit(10) / F.lit(max(total, 1))).cast("int"))
        .drop("_part", "_local")
    )


def decile_edges(previous: DataFrame) -> list[float]:
    """Lower propensity bound of deciles 1..9 of a scored day (10 rows at most): PSI bins."""
    rows = previous.groupBy("decile").agg(F.min("propensity").alias("low")).collect()
    low = {r["decile"]: r["low"] for r in rows}
    return sorted({low[d] for d in range(1, 10) if d in low})


def bin_shares(scores: DataFrame, edges: list[float]) -> np.ndarray:
    """Shares of rows in the bins cut at ``edges`` (ascending): bin i holds edges[i-1] <= p < edges[i]."""
    b = F.lit(0)
    for e in edges:
        b = b + (F.col("propensity") >= F.lit(e)).cast("int")
    counts = {r["b"]: r["n"] for r in scores.groupBy(b.alias("b")).agg(F.count(F.lit(1)).alias("n")).collect()}
    total = max(sum(counts.values()), 1)
    return np.array([counts.get(i, 0) / total for i in range(len(edges) + 1)], dtype=np.float64)


def psi(expected: np.ndarray, actual: np.ndarray, floor: float = 1e-4) -> float:
    """Population stability index: sum over bins of (a - e) * ln(a / e), shares floored."""
    e, a = np.maximum(expected, floor), np.maximum(actual, floor)
    return float(np.sum((a - e) * np.log(a / e)))


def monitoring_warnings(settings: ScoringConfig, *, psi_value: float | None, oov: dict[str, float],
                        empty_share: float) -> list[str]:
    warnings = []
    if psi_value is not None and psi_value > settings.warn_psi:
        warnings.append(f"PSI {psi_value:.3f} against the previous scoring day exceeds scoring.warn_psi {settings.warn_psi}")
    for feature, share in sorted(oov.items()):
        if share > settings.warn_oov_share:
            warnings.append(f"OOV share of {feature} {share:.3f} exceeds scoring.warn_oov_share {settings.warn_oov_share}")
    if empty_share > settings.warn_empty_share:
        warnings.append(f"{empty_share:.3f} of users have no event the vocabulary knows "
                        f"(scoring.warn_empty_share {settings.warn_empty_share})")
    return warnings


def with_comments(df: DataFrame, schema: T.StructType) -> DataFrame:
    """``df``'s columns in ``schema``'s order, carrying its comments (Delta keeps them)."""
    return df.select(*[F.col(f.name).alias(f.name, metadata=f.metadata) for f in schema.fields])


# --------------------------------------------------------------------------- the run


def _explainer(vocabulary: vocab.Vocabulary, settings: ScoringConfig) -> Explainer:
    def tokens(feature: str, keep_from: int) -> list[str | None]:
        # Bounded by vocab.<feature>.max_size: event types and categories, never items.
        rows = vocabulary.lookup(feature).collect()
        out: list[str | None] = [None] * (max((r["index"] for r in rows), default=0) + 1)
        for r in rows:
            if r["index"] >= keep_from:
                out[r["index"]] = r["token"]
        return out

    first_known = {f: vocab.FIRST_OOV + k for f, k in vocabulary.oov_buckets.items()}
    return Explainer(
        tuple(t or "" for t in tokens("event_type", first_known["event_type"])),
        tuple(tokens("category_id", first_known["category_id"])),
        settings.explain_max_groups, settings.explain_min_impact,
    )


def _download_model(spark: SparkSession, champ: Champion, folder: Path) -> str:
    """Ship the champion's model directory (copied under ``folder``) to the executors; its name
    for ``SparkFiles.get`` (unique per run: Spark refuses a name twice with other content)."""
    import mlflow.artifacts

    name = f"seqlake-model-{champ.name}-v{champ.version}-{uuid.uuid4().hex[:8]}"
    local = folder / name
    downloaded = mlflow.artifacts.download_artifacts(f"models:/{champ.name}/{champ.version}")
    shutil.copytree(downloaded, local)
    spark.sparkContext.addFile(str(local), recursive=True)
    return name


def score(spark: SparkSession, cfg: Config, *, source: str, day: dt.date) -> ScoreResult:
    """Score every user of ``source`` active in the lookback ending with ``day`` (module docstring)."""
    started = time.monotonic()
    started_at = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    run_id = f"score-{started_at:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    settings = cfg.scoring
    with stage(f"score: champion and inputs for {day}") as info:
        champ = champion(cfg, source)
        vocabulary = _check_inputs(spark, cfg, champ, day)
        user_state = tables.read(spark, cfg, C.USER_STATE).filter(F.col(C.SOURCE) == source)
        active = filter_active(user_state, day=day, lookback_days=settings.lookback_days).count()
        info.update(model_version=champ.version, vocab_version=champ.vocab_version, users=active)
    if active < settings.min_users:
        raise BrokenScoringInput(
            f"{active} users of source {source!r} were active in the {settings.lookback_days} days ending {day} "
            f"(scoring.min_users {settings.min_users}); check that {day} was ingested, sessionized and folded "
            f"into the state"
        )
    scratch = Path(tempfile.mkdtemp(prefix="seqlake-score-"))
    try:
        return _score(spark, cfg, source=source, day=day, champ=champ, vocabulary=vocabulary, active=active,
                      model_dir=_download_model(spark, champ, scratch), run_id=run_id, started=started,
                      started_at=started_at)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def input_partitions(cfg: Config) -> int:
    """Python tasks that score: ``scoring.partitions``, else ``spark.shuffle_partitions``."""
    return cfg.scoring.partitions or cfg.spark.shuffle_partitions


def _score(spark: SparkSession, cfg: Config, *, source: str, day: dt.date, champ: Champion,
           vocabulary: vocab.Vocabulary, active: int, model_dir: str, run_id: str, started: float,
           started_at: dt.datetime) -> ScoreResult:
    settings = cfg.scoring
    horizon = champ.horizon_days or cfg.sequences.horizon_days
    explainer = _explainer(vocabulary, settings) if settings.explain else None
    user_state = tables.read(spark, cfg, C.USER_STATE).filter(F.col(C.SOURCE) == source)
    loads, batch_count = spark.sparkContext.accumulator(0), spark.sparkContext.accumulator(0)
    observation = Observation(f"score-{day}")
    partitions = input_partitions(cfg)

    with stage(f"score: {active:,} users with model version {champ.version}"
               f"{' and reasons' if explainer else ''}") as info:
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(settings.batch_rows))
        inputs = (
            scoring_inputs(user_state, day=day, vocabulary=vocabulary, cfg=cfg, observation=observation)
            # Same rows in, same batches out: a rerun gives the same floats.
            .repartition(partitions, C.USER_ID)
            .sortWithinPartitions(C.USER_ID)
        )
        scored = inputs.mapInArrow(
            score_batches(model_dir, length=cfg.sequences.length, explainer=explainer, loads=loads,
                          known_item_from=vocab.FIRST_OOV + vocabulary.oov_buckets["item_id"], batches=batch_count,
                          tf_threads=settings.tf_threads),
            SCORED,
        ).localCheckpoint(eager=True)  # scored once, then ranked and summarised
        ranked = with_rank_and_decile(scored)
        rows = ranked.select(
            C.SOURCE, F.lit(day).alias(C.SCORE_DATE), C.USER_ID, "propensity", "rank", "decile",
            F.lit(horizon).alias("horizon_days"), F.lit(champ.name).alias("model_name"),
            F.lit(champ.version).alias("model_version"), F.lit(champ.vocab_version).alias(C.VOCAB_VERSION),
            F.lit(champ.run_id).alias("run_id"), "reasons",
        )
        written = tables.replace_where(
            with_comments(rows, schemas.USER_PROPENSITY), cfg, C.USER_PROPENSITY,
            f"source = '{source}' AND score_date = '{day}'", partition_by=[C.SOURCE, C.SCORE_DATE],
        )
        info.update(users_scored=written, batches=batch_count.value, model_loads=loads.value)
    if written != active:
        raise BrokenScoringInput(f"{written:,} users scored but {active:,} were active: rows were lost")

    with stage("score: monitoring") as info:
        summary = scored.agg(
            F.mean("propensity").alias("mean"),
            F.percentile_approx("propensity", list(QUANTILES), 10_000).alias("q"),
            F.mean(F.col("empty_input").cast("double")).alias("empty_share"),
        ).first()
        quantiles = {f"p{round(q * 100):02d}": float(v) for q, v in zip(QUANTILES, summary["q"])}
        previous = _previous_day(spark, cfg, source, day)
        psi_value = None
        if previous is not None:
            edges = decile_edges(previous)
            psi_value = psi(bin_shares(previous, edges), bin_shares(scored, edges))
        metric_rows = vocab.metrics_rows(run_id, C.STAGE_SCORE, source, day, vocabulary, observation.get)
        vocab.write_metrics(spark, cfg, metric_rows, stage_name=C.STAGE_SCORE, source=source, run_date=day)
        oov = {r[5]: r[10] for r in metric_rows}
        empty_share = float(summary["empty_share"])
        warnings = monitoring_warnings(settings, psi_value=psi_value, oov=oov, empty_share=empty_share)
        for w in warnings:
            log.warning("[score] %s %s: %s", source, day, w)
        info.update(mean=round(float(summary["mean"]), 4), psi=None if psi_value is None else round(psi_value, 4),
                    warnings=len(warnings))

    elapsed = time.monotonic() - started
    mlflow_run_id = _log_run(cfg, source=source, day=day, champ=champ, users=written, mean=float(summary["mean"]),
                             quantiles=quantiles, psi_value=psi_value, oov=oov, empty_share=empty_share,
                             warnings=warnings, scored=scored, elapsed=elapsed)
    result = ScoreResult(run_id, source, day, champ, written, float(summary["mean"]), quantiles, psi_value, oov,
                         empty_share, tuple(warnings), loads.value, batch_count.value, elapsed, mlflow_run_id)
    row = (run_id, source, day, champ.name, champ.version, champ.vocab_version, written, float(summary["mean"]),
           quantiles["p10"], quantiles["p50"], quantiles["p90"], psi_value, max(oov.values(), default=0.0),
           empty_share, list(warnings), loads.value, batch_count.value, mlflow_run_id, started_at,
           dt.datetime.now(dt.timezone.utc).replace(tzinfo=None))
    tables.append(spark.createDataFrame([row], schemas.SCORE_RUNS), cfg, C.SCORE_RUNS)
    return result


def _previous_day(spark: SparkSession, cfg: Config, source: str, day: dt.date) -> DataFrame | None:
    """The latest scored day before ``day`` (its propensity and decile), or None."""
    if not tables.exists(spark, cfg, C.USER_PROPENSITY):
        return None
    table = tables.read(spark, cfg, C.USER_PROPENSITY).filter(F.col(C.SOURCE) == source)
    last = table.filter(F.col(C.SCORE_DATE) < F.lit(day)).agg(F.max(C.SCORE_DATE).alias("d")).first()["d"]
    if last is None:
        return None
    return table.filter(F.col(C.SCORE_DATE) == F.lit(last)).select("propensity", "decile")


def _log_run(cfg: Config, *, source: str, day: dt.date, champ: Champion, users: int, mean: float,
             quantiles: dict[str, float], psi_value: float | None, oov: dict[str, float], empty_share: float,
             warnings: list[str], scored: DataFrame, elapsed: float) -> str:
    import mlflow

    from seqlake import evaluation

    experiment_id = tracking.setup_experiment(cfg, cfg.mlflow.scoring_experiment)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"score-{source}-{day}") as run:
        mlflow.log_params({"score_date": day.isoformat(), "source": source, "model_name": champ.name,
                           "model_version": champ.version, "vocab_version": champ.vocab_version,
                           "lookback_days": cfg.scoring.lookback_days, "explain": cfg.scoring.explain})
        metrics = {"users_scored": users, "propensity_mean": mean, "empty_share": empty_share,
                   "elapsed_seconds": elapsed, **{f"propensity_{k}": v for k, v in quantiles.items()},
                   **{f"oov_share_{k}": v for k, v in oov.items()}}
        if psi_value is not None:
            metrics["psi"] = psi_value
        mlflow.log_metrics(metrics)
        mlflow.set_tags({"stage": "score", "source": source, "score_date": day.isoformat(),
                         "model_version": champ.version, "training_run_id": champ.run_id,
                         "warnings": " | ".join(warnings) or "none"})
        # 50-bin histogram counted by Spark: 50 rows reach the driver, not the users.
        bins = {r["b"]: r["n"] for r in scored.groupBy(F.least(F.floor(F.col("propensity") * 50), F.lit(49))
                                                       .cast("int").alias("b")).count().withColumnRenamed(
            "count", "n").collect()}
        with tempfile.TemporaryDirectory() as tmp:
            path = evaluation.histogram_plot([bins.get(i, 0) for i in range(50)], Path(tmp) / "score_distribution.png",
                                             title=f"{source} propensity on {day} ({users:,} users)")
            mlflow.log_artifact(str(path), "plots")
        return run.info.run_id
