"""Training data: which ``user_sequences`` rows train, validate and test a model, and Petastorm
readers that deliver them to TensorFlow, every pass checked against the table's row count.

A reader never points Petastorm at the table's folder (it would also read files Delta has
logically removed): it reads the Parquet files of the table's current snapshot for one split
(``DataFrame.inputFiles()`` of a partition filter), and counts the rows it delivered. Petastorm
has been seen to yield zero rows without an error; here a short pass raises ``RowCountMismatch``.

Batches are dicts of numpy arrays: one int32 ``(n, length)`` array per sequence feature
(``vocab.ARRAYS``), ``aggregates`` float32 ``(n, len(AGGREGATES))`` and ``label`` float32 ``(n,)``.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Iterator, Sequence

import numpy as np
import pyspark.sql.functions as F
from pyspark.sql import DataFrame, SparkSession

from seqlake import constants as C
from seqlake import tables, vocab
from seqlake.config import Config, parse_date

# Aggregate (RFM-style) features of user_sequences, in the order of the `aggregates` input.
AGGREGATES = (
    "recency_days", "frequency", "monetary", "n_events", "n_sessions", "active_days",
    "carts_7d", "purchases_7d", "carts_30d", "purchases_30d",
)
SEQUENCES = vocab.ARRAYS
SPLITS = ("train", "validation", "test")


class NoTrainingData(RuntimeError):
    """No labelled snapshot (or an empty split) to train or evaluate on."""


class RowCountMismatch(RuntimeError):
    """A reader delivered a different number of rows than the table holds for its files."""


@dataclasses.dataclass(frozen=True)
class SplitData:
    split: str
    cutoffs: tuple[dt.date, ...]
    files: tuple[str, ...]  # Parquet URLs of the table's current files for this split
    rows: int
    positives: int


@dataclasses.dataclass(frozen=True)
class TrainingData:
    source: str
    vocab_version: int
    length: int
    train: SplitData
    validation: SplitData
    test: SplitData
    # Embedding input sizes per sequence feature (largest index + 1) of the vocab version.
    input_dims: dict[str, int]
    # event_type token -> index in the vocab version (the model finds carts by it).
    event_types: dict[str, int]
    # Mean and variance of log1p(aggregate) on the training rows (the model's normaliser).
    aggregate_mean: tuple[float, ...]
    aggregate_variance: tuple[float, ...]

    @property
    def eval_cutoff(self) -> dt.date:
        return self.test.cutoffs[0]

    def describe(self) -> dict[str, object]:
        return {
            "source": self.source, "vocab_version": self.vocab_version, "length": self.length,
            "train_cutoffs": [d.isoformat() for d in self.train.cutoffs], "eval_cutoff": self.eval_cutoff.isoformat(),
            **{f"{s.split}_rows": s.rows for s in (self.train, self.validation, self.test)},
            **{f"{s.split}_positives": s.positives for s in (self.train, self.validation, self.test)},
            **{f"{s.split}_files": len(s.files) for s in (self.train, self.validation, self.test)},
        }


def input_dims(vocabulary: vocab.Vocabulary) -> dict[str, int]:
    dims = {column: vocabulary.cardinality[feature] for column, feature in vocab.ENCODED.items()}
    dims.update(price_bucket=vocab.PRICE_BUCKETS, gap_bucket=vocab.GAP_BUCKETS, session_start=2)
    return dims


def _sequences(spark: SparkSession, cfg: Config, source: str) -> DataFrame:
    return tables.read(spark, cfg, C.USER_SEQUENCES).filter(F.col(C.SOURCE) == source)


def split_rows(rows: DataFrame, split: str, cutoffs: Sequence[dt.date]) -> DataFrame:
    """The rows of one split at the given snapshots (partition filters only)."""
    return rows.filter((F.col("split") == split) & F.col(C.SNAPSHOT_DATE).isin(list(cutoffs)))


def _split(rows: DataFrame, split: str, cutoffs: Sequence[dt.date]) -> SplitData:
    part = split_rows(rows, split, cutoffs)
    stats = part.agg(F.count(F.lit(1)).alias("n"), F.sum("label").alias("pos"), F.count("label").alias("labelled")).first()
    if stats["n"] == 0:
        raise NoTrainingData(f"the {split} split of snapshot(s) {', '.join(map(str, cutoffs))} is empty")
    if stats["labelled"] != stats["n"]:
        raise NoTrainingData(f"the {split} split of snapshot(s) {', '.join(map(str, cutoffs))} has unlabelled "
                             f"(scoring) rows; training needs labelled snapshots")
    return SplitData(split, tuple(cutoffs), tuple(sorted(part.inputFiles())), stats["n"], stats["pos"] or 0)


def select(spark: SparkSession, cfg: Config, source: str) -> TrainingData:
    """The train split of the training snapshots, and the validation and test splits of the
    latest of them, all encoded with one vocab version (the latest, unless training.cutoffs
    names snapshots of another)."""
    rows = _sequences(spark, cfg, source)
    if cfg.training.cutoffs:
        cutoffs = sorted(parse_date(d, "training.cutoffs") for d in cfg.training.cutoffs)
    else:
        latest = vocab.latest_version(spark, cfg, source)
        cutoffs = [
            r[C.SNAPSHOT_DATE]
            for r in rows.filter((F.col(C.VOCAB_VERSION) == F.lit(latest)) & F.col("label").isNotNull())
            .select(C.SNAPSHOT_DATE).distinct().orderBy(C.SNAPSHOT_DATE).collect()  # one row per snapshot
        ]
    if not cutoffs:
        raise NoTrainingData(
            f"no labelled user_sequences snapshot of source {source!r} (with the latest vocab version); "
            f"run `seqlake sequences --source {source} --from D1 --to D2` first"
        )
    chosen = rows.filter(F.col(C.SNAPSHOT_DATE).isin(cutoffs))
    present = chosen.select(C.SNAPSHOT_DATE, C.VOCAB_VERSION).distinct().collect()  # a few rows
    versions = {r[C.VOCAB_VERSION] for r in present}
    missing = set(cutoffs) - {r[C.SNAPSHOT_DATE] for r in present}
    if missing:
        raise NoTrainingData(f"training.cutoffs: no snapshot of source {source!r} at {', '.join(map(str, sorted(missing)))}")
    if len(versions) != 1:
        raise NoTrainingData(
            f"the training snapshots {', '.join(map(str, cutoffs))} are encoded with vocab versions "
            f"{sorted(versions)}; rebuild them with one version (`seqlake sequences --vocab-version V`)"
        )
    version = versions.pop()
    train = _split(chosen, "train", cutoffs)
    validation = _split(chosen, "validation", cutoffs[-1:])
    test = _split(chosen, "test", cutoffs[-1:])
    train_rows = chosen.filter(F.col("split") == "train")
    logs = [F.log1p(F.greatest(F.col(c).cast("double"), F.lit(0.0))) for c in AGGREGATES]
    moments = train_rows.agg(
        *[F.avg(x).alias(f"m{i}") for i, x in enumerate(logs)],
        *[F.var_pop(x).alias(f"v{i}") for i, x in enumerate(logs)],
    ).first()
    sizes = chosen.agg(F.min(F.size("item")).alias("lo"), F.max(F.size("item")).alias("hi")).first()
    if sizes["lo"] != sizes["hi"]:
        raise NoTrainingData(
            f"the training snapshots {', '.join(map(str, cutoffs))} hold sequences of {sizes['lo']} to "
            f"{sizes['hi']} events; rebuild them with one sequences.length"
        )
    length = sizes["lo"]
    vocabulary = vocab.load(spark, cfg, source, version)
    event_types = {r["token"]: r["index"] for r in vocabulary.lookup("event_type").collect()}  # a handful
    return TrainingData(
        source=source, vocab_version=version, length=length, train=train, validation=validation, test=test,
        input_dims=input_dims(vocabulary), event_types=event_types,
        aggregate_mean=tuple(float(moments[f"m{i}"]) for i in range(len(AGGREGATES))),
        aggregate_variance=tuple(max(float(moments[f"v{i}"]), 1e-6) for i in range(len(AGGREGATES))),
    )


# --------------------------------------------------------------------------- readers


def _as_batch(columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    batch = {name: np.asarray(columns[name], dtype=np.int32) for name in SEQUENCES}
    batch["aggregates"] = np.stack([np.asarray(columns[c], dtype=np.float32) for c in AGGREGATES], axis=1)
    label = columns["label"]
    batch["label"] = np.asarray(label, dtype=np.float32) if label is not None else None
    return batch


def _take(parts: list[dict[str, np.ndarray]], n: int) -> dict[str, np.ndarray]:
    """The first ``n`` rows of the queued parts (removed from the queue)."""
    out: list[dict[str, np.ndarray]] = []
    need = n
    while need:
        head = parts[0]
        size = len(head["label"])
        if size <= need:
            out.append(parts.pop(0))
            need -= size
        else:
            out.append({k: v[:need] for k, v in head.items()})
            parts[0] = {k: v[need:] for k, v in head.items()}
            need = 0
    return {k: np.concatenate([p[k] for p in out]) for k in out[0]}


def batches(
    files: Sequence[str],
    *,
    expected_rows: int,
    batch_size: int,
    pool: str = "dummy",
    reader_workers: int = 2,
    seed: int | None = None,
    repeat: bool = False,
) -> Iterator[dict[str, np.ndarray]]:
    """Batches of ``batch_size`` rows (the last of a pass may be shorter) read with Petastorm.

    Every pass over ``files`` must deliver ``expected_rows`` rows, else ``RowCountMismatch``.
    With ``seed``, row groups and rows within them are shuffled, differently on each pass but
    the same on a rerun (with the ``dummy`` pool). With ``repeat``, passes go on forever.
    """
    _quiet_petastorm()
    from petastorm import make_batch_reader

    fields = [*SEQUENCES, *AGGREGATES, "label"]
    passes = 0
    while True:
        rng = np.random.default_rng([seed, passes]) if seed is not None else None
        delivered = 0
        queued: list[dict[str, np.ndarray]] = []
        queued_rows = 0
        with make_batch_reader(
            list(files), schema_fields=fields, num_epochs=1, reader_pool_type=pool, workers_count=reader_workers,
            shuffle_row_groups=rng is not None, seed=None if rng is None else int(rng.integers(2**31)),
        ) as reader:
            for chunk in reader:
                part = _as_batch(chunk._asdict())
                n = len(part["label"])
                delivered += n
                if rng is not None:
                    order = rng.permutation(n)
                    part = {k: v[order] for k, v in part.items()}
                queued.append(part)
                queued_rows += n
                while queued_rows >= batch_size:
                    yield _take(queued, batch_size)
                    queued_rows -= batch_size
        if delivered != expected_rows:
            raise RowCountMismatch(
                f"Petastorm delivered {delivered:,} rows from {len(files)} file(s), the table holds "
                f"{expected_rows:,} for them (pass {passes + 1}); refusing to train or score on partial data"
            )
        if queued_rows:
            yield _take(queued, queued_rows)
        passes += 1
        if not repeat:
            return


def _quiet_petastorm() -> None:
    # petastorm 0.12 uses pyarrow's legacy dataset API (held at pyarrow 14, STACK.md): one
    # FutureWarning per call, and an INFO line per reader about the missing Petastorm metadata.
    import logging
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning, module=r"petastorm(\..*)?$")
    logging.getLogger("petastorm").setLevel(logging.WARNING)


def shard(files: Sequence[str], index: int, count: int) -> tuple[str, ...]:
    """Worker ``index`` of ``count``'s files (round robin over the sorted list)."""
    return tuple(sorted(files)[index::count])


def file_rows(files: Sequence[str]) -> int:
    """Rows in Parquet ``files`` from their footers (no data read)."""
    import pyarrow.parquet as pq

    from seqlake import storage

    # s3a:// URLs (Spark's inputFiles on an object store): endpoint from the running session.
    active = SparkSession.getActiveSession()
    conf = storage.hadoop_conf_of(active) if active is not None and any(
        not storage.is_local(url) for url in files) else None
    total = 0
    for url in files:
        filesystem, path = storage.arrow_filesystem(url, conf)
        with filesystem.open_input_file(path) as handle:
            total += pq.ParquetFile(handle).metadata.num_rows
    return total


def load_arrays(split: SplitData, *, pool: str = "dummy", reader_workers: int = 2) -> dict[str, np.ndarray]:
    """A whole split in memory (verified like every pass): for evaluation and the in-memory
    benchmark."""
    parts = list(batches(split.files, expected_rows=split.rows, batch_size=max(split.rows, 1), pool=pool,
                         reader_workers=reader_workers))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def tf_dataset(
    files: Sequence[str],
    *,
    expected_rows: int,
    batch_size: int,
    length: int,
    pool: str,
    reader_workers: int,
    seed: int | None,
    repeat: bool,
):
    """``tf.data`` of ((features, label)) batches over Petastorm; auto-sharding off (the files
    are already this worker's shard)."""
    import tensorflow as tf

    features = {name: tf.TensorSpec((None, length), tf.int32) for name in SEQUENCES}
    features["aggregates"] = tf.TensorSpec((None, len(AGGREGATES)), tf.float32)

    def generate():
        for batch in batches(files, expected_rows=expected_rows, batch_size=batch_size, pool=pool,
                             reader_workers=reader_workers, seed=seed, repeat=repeat):
            label = batch.pop("label")
            yield batch, label

    ds = tf.data.Dataset.from_generator(generate, output_signature=(features, tf.TensorSpec((None,), tf.float32)))
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)
