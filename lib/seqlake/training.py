"""The training loop, the same for one worker and for N workers.

One custom loop under a ``tf.distribute`` strategy (the default one for a single worker,
``MultiWorkerMirroredStrategy`` for N), not ``Model.fit``: Keras 3's ``fit`` fails under
MultiWorkerMirroredStrategy on dict inputs (keras issue #20585, see STACK.md), while a loop that
calls ``strategy.run`` on a step function is the documented tf.distribute pattern and works with
Keras 3 layers, variables and optimizers. Each worker reads its own shard of the training files
(``dataset.shard``) through Petastorm, with its share of the global batch; gradients are summed
across workers and the loss is averaged over the global batch (``tf.nn.compute_average_loss``).

Every epoch ends with the validation split scored by every worker (identical weights give
identical metrics, so all workers take the same early-stopping decision); the best epoch's
weights (validation AUC-PR) are restored at the end.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Callable

import numpy as np

from seqlake import dataset, evaluation
from seqlake.config import Config
from seqlake.progress import log


@dataclasses.dataclass
class FitResult:
    history: list[dict[str, float]]
    best_epoch: int
    weights: list[np.ndarray]
    class_weights: tuple[float, float]  # (negative, positive)
    seconds: float
    samples_per_second: float


def quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def class_weights(data: dataset.TrainingData, imbalance: str) -> tuple[float, float]:
    """(negative, positive) loss weights: balanced for ``class_weight``, else 1."""
    if imbalance != "class_weight" or data.train.positives in (0, data.train.rows):
        return 1.0, 1.0
    n, pos = data.train.rows, data.train.positives
    return n / (2.0 * (n - pos)), n / (2.0 * pos)


def build(cfg: Config, data: dataset.TrainingData):
    from seqlake.model import build_model

    return build_model(cfg.model, length=data.length, input_dims=data.input_dims,
                       event_types=data.event_types, aggregate_mean=data.aggregate_mean, aggregate_variance=data.aggregate_variance)


def predict(model, split: dataset.SplitData, cfg: Config, sizes: dict[str, int] | None = None):
    """(labels, scores) of a whole split, read through a verified Petastorm pass."""
    import tensorflow as tf

    from seqlake.model import clip_to_model

    forward = getattr(model, "_seqlake_forward", None)
    if forward is None:  # one traced function per model, not per call
        forward = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
        model._seqlake_forward = forward
    labels, scores = [], []
    for batch in dataset.batches(split.files, expected_rows=split.rows, batch_size=max(cfg.training.batch_size, 1024),
                                 pool=cfg.training.reader_pool, reader_workers=cfg.training.reader_workers):
        y = batch.pop("label")
        if sizes is not None:
            batch = clip_to_model(batch, sizes)
        labels.append(y)
        scores.append(np.asarray(forward(batch)).reshape(-1))
    return np.concatenate(labels), np.concatenate(scores)


def fit(
    cfg: Config,
    data: dataset.TrainingData,
    *,
    worker: int = 0,
    workers: int = 1,
    strategy=None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> FitResult:
    """Train under ``strategy`` (default: TensorFlow's default strategy) on this worker's shard."""
    quiet_tensorflow()
    import keras
    import tensorflow as tf

    settings = cfg.training
    keras.utils.set_random_seed(settings.seed)
    strategy = strategy or tf.distribute.get_strategy()
    files = dataset.shard(data.train.files, worker, workers)
    rows = data.train.rows if workers == 1 else dataset.file_rows(files)
    if not files or rows == 0:
        raise dataset.NoTrainingData(f"worker {worker} of {workers} has no training rows: write at least "
                                     f"{workers} files per split (sequences.files_per_snapshot)")
    local_batch = settings.batch_size // workers
    steps = max(1, math.ceil(data.train.rows / settings.batch_size))
    negative_weight, positive_weight = class_weights(data, settings.imbalance)

    def make_dataset(_context):
        return dataset.tf_dataset(files, expected_rows=rows, batch_size=local_batch, length=data.length,
                                  pool=settings.reader_pool, reader_workers=settings.reader_workers,
                                  seed=settings.seed + worker, repeat=True)

    with strategy.scope():
        model = build(cfg, data)
        optimizer = keras.optimizers.Adam(settings.learning_rate)

    def per_example_loss(y, p):
        y = tf.reshape(y, (-1, 1))
        if settings.imbalance == "focal":
            loss = keras.losses.binary_focal_crossentropy(y, p, gamma=settings.focal_gamma)
        else:
            loss = keras.losses.binary_crossentropy(y, p)
        weight = tf.reshape(y, (-1,)) * positive_weight + (1.0 - tf.reshape(y, (-1,))) * negative_weight
        return loss * weight

    def step_fn(x, y):
        with tf.GradientTape() as tape:
            p = model(x, training=True)
            loss = tf.nn.compute_average_loss(per_example_loss(y, p), global_batch_size=settings.batch_size)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        return loss

    @tf.function
    def train_step(iterator):
        x, y = next(iterator)
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(step_fn, args=(x, y)), axis=None)

    iterator = iter(strategy.distribute_datasets_from_function(make_dataset))
    history: list[dict[str, float]] = []
    best, best_epoch, best_weights, waited = -1.0, 0, None, 0
    start = time.monotonic()
    trained = 0
    for epoch in range(1, settings.epochs + 1):
        t0 = time.monotonic()
        total = 0.0
        for _ in range(steps):
            total += float(train_step(iterator))
        seconds = time.monotonic() - t0
        trained += steps * settings.batch_size
        y, p = predict(model, data.validation, cfg)
        val = evaluation.metrics(y, p)
        record = {"loss": total / steps, "epoch_seconds": seconds,
                  **{f"val_{k}": v for k, v in val.items()}}
        history.append(record)
        if on_epoch is not None:
            on_epoch(epoch, record)
        if worker == 0:
            log.info("[train] epoch %d/%d loss=%.4f val_auc_pr=%.4f val_auc_roc=%.4f %.1fs (%d steps of %d)",
                     epoch, settings.epochs, record["loss"], val["auc_pr"], val["auc_roc"], seconds, steps,
                     settings.batch_size)
        if val["auc_pr"] > best + 1e-6:
            best, best_epoch, best_weights, waited = val["auc_pr"], epoch, model.get_weights(), 0
        else:
            waited += 1
            if waited >= settings.patience:
                break
    elapsed = time.monotonic() - start
    return FitResult(history, best_epoch, best_weights, (negative_weight, positive_weight), elapsed,
                     trained / max(sum(h["epoch_seconds"] for h in history), 1e-9))


def model_from(cfg: Config, data: dataset.TrainingData, result: FitResult):
    """A fresh model (no strategy) holding the fit's best weights, its output bias corrected for
    class weights so that it returns probabilities."""
    quiet_tensorflow()
    from seqlake.model import correct_prior

    model = build(cfg, data)
    model.set_weights(result.weights)
    negative, positive = result.class_weights
    if cfg.training.imbalance == "class_weight" and positive != negative:
        correct_prior(model, positive, negative)
    return model
