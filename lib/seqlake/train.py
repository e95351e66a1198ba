"""``seqlake train``: one MLflow run that trains, evaluates against baselines, registers the
model and applies the promotion gate.

1. ``dataset.select``: train split of the training snapshots, validation and test splits of the
   latest one, one vocab version; the run records it (and the vocab version as a tag).
2. ``training.fit`` in this process (one worker) or ``distributed.fit`` (N workers in a Spark
   barrier stage); per-epoch metrics are logged by this process or the chief worker.
3. The model and every baseline (``baselines``) are scored on the same test rows; metrics and
   plots (``evaluation``) go to the run.
4. The model is logged with a signature and pinned pip requirements and registered as
   ``mlflow.registered_model``, its provenance tags in the same registry transaction.
5. Promotion gate: the alias ``champion`` moves to the new version only if its test metric
   (``mlflow.promotion_metric``) beats the current champion's, scored now on the same test
   rows, by more than ``mlflow.promotion_margin``. The decision and its reason are tags of the
   version and of the run, written in an order that a rerun can finish after a kill at any
   point (``_record_decision``). With ``promote_now=False`` (``train --no-promote``, the weekly
   DAG) the version is left ``pending`` and ``judge`` (``seqlake promote``) applies the same
   gate as a step of its own.
"""
from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import pyspark.sql.functions as F
from pyspark.sql import SparkSession

from seqlake import baselines, dataset, evaluation, tables, tracking, training
from seqlake import constants as C
from seqlake.config import Config
from seqlake.progress import log, stage


@dataclasses.dataclass(frozen=True)
class TrainResult:
    run_id: str
    experiment_id: str
    model_version: str
    promoted: bool
    reason: str
    test_metrics: dict[str, dict[str, float]]  # scorer -> metric -> value
    best_epoch: int
    epochs_run: int
    data: dataset.TrainingData
    samples_per_second: float


def _epoch_logger(run_id: str):
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient()

    def log_epoch(epoch: int, record: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, float(v), now, epoch) for k, v in record.items()])

    return log_epoch


def decide(cfg: Config, data: dataset.TrainingData, version: str,
           candidate: dict[str, float]) -> tuple[bool, str, float | None]:
    """The gate's decision, not yet acted on: (promote, reason, champion's metric on this test split)."""
    import mlflow.tensorflow

    from seqlake.model import embedding_sizes

    name, metric, margin = cfg.mlflow.registered_model, cfg.mlflow.promotion_metric, cfg.mlflow.promotion_margin
    current = tracking.champion_version(cfg)
    if current is None:
        return True, f"no champion yet: version {version} becomes champion", None
    champion = mlflow.tensorflow.load_model(f"models:/{name}/{current.version}")
    # Scored now, on the same test rows; indices a champion of an older vocab version does not
    # know become 1 (unknown): earlier indices are stable across versions.
    y, p = training.predict(champion, data.test, cfg, sizes=embedding_sizes(champion))
    theirs = evaluation.metrics(y, p)[metric]
    ours = candidate[metric]
    where = f"test split of {data.source} at {data.eval_cutoff} ({data.test.rows:,} users)"
    if ours > theirs + margin:
        return True, (f"version {version} {metric} {ours:.4f} beats champion version {current.version}'s "
                      f"{theirs:.4f} by more than {margin} on the {where}"), theirs
    return False, (f"version {version} {metric} {ours:.4f} does not beat champion version {current.version}'s "
                   f"{theirs:.4f} by more than {margin} on the {where}; champion stays"), theirs


PENDING = "pending"  # model version tag `promotion` until the gate has judged it


@dataclasses.dataclass(frozen=True)
class Judgement:
    model_version: str
    promoted: bool
    reason: str
    already_judged: bool  # a rerun: the recorded decision, unchanged


def _record_decision(cfg: Config, run_id: str, version: str, promoted: bool, reason: str,
                     theirs: float | None) -> None:
    """Record the decision and act on it, in an order that a kill at any point leaves to be
    finished by a rerun: the reason (on the version and its run), then the alias, and last the
    decision; the version's `promotion` tag is what marks it judged. A version still pending
    that holds the alias was promoted by a run killed before that tag (see ``judge``)."""
    from mlflow import MlflowClient

    client = MlflowClient()
    name, decision = cfg.mlflow.registered_model, "promoted" if promoted else "rejected"
    client.set_model_version_tag(name, version, "promotion.reason", reason)
    client.set_tag(run_id, "promotion.reason", reason)
    if theirs is not None:
        client.log_metric(run_id, f"champion_test_{cfg.mlflow.promotion_metric}", theirs)
    if promoted:
        client.set_registered_model_alias(name, tracking.CHAMPION, version)
    client.set_tag(run_id, "promotion.decision", decision)
    client.set_model_version_tag(name, version, "promotion", decision)


def gate(cfg: Config, data: dataset.TrainingData, run_id: str, version: str,
         candidate: dict[str, float]) -> tuple[bool, str]:
    """Apply the promotion gate to ``version`` (trained in ``run_id``): (promoted, reason)."""
    promoted, reason, theirs = decide(cfg, data, version, candidate)
    _record_decision(cfg, run_id, version, promoted, reason, theirs)
    return promoted, reason


def judge(spark: SparkSession, cfg: Config, *, source: str, version: str | None = None) -> Judgement:
    """The promotion gate as a step of its own: score the candidate ``version`` (default: the
    newest version of the registered model) and the champion on the current test split and move
    ``champion`` only if the candidate wins by the margin. A version already judged keeps its
    recorded decision (a retried step changes nothing)."""
    import mlflow.tensorflow
    from mlflow import MlflowClient

    from seqlake.model import embedding_sizes

    tracking.setup(cfg)
    client = MlflowClient()
    name = cfg.mlflow.registered_model
    if version is None:
        versions = client.search_model_versions(f"name = '{name}'")
        if not versions:
            raise dataset.NoTrainingData(f"no version of {name} to judge; run `seqlake train --no-promote` first")
        version = str(max(int(v.version) for v in versions))
    candidate = client.get_model_version(name, version)
    recorded = candidate.tags.get("promotion")
    if recorded not in (None, PENDING):
        return Judgement(version, recorded == "promoted", candidate.tags.get("promotion.reason", ""), True)
    if tracking.CHAMPION in (candidate.aliases or []):
        # A run killed after moving the alias, before recording the decision: finish its record
        # (judged again, the version would be compared with itself and "rejected").
        reason = candidate.tags.get("promotion.reason") or f"version {version} holds the alias already"
        _record_decision(cfg, candidate.run_id, version, True, reason, None)
        return Judgement(version, True, reason, True)
    with stage(f"promote: judge version {version} against the champion") as info:
        data = dataset.select(spark, cfg, source)
        model = mlflow.tensorflow.load_model(f"models:/{name}/{version}")
        y, p = training.predict(model, data.test, cfg, sizes=embedding_sizes(model))
        ours = evaluation.metrics(y, p)
        promoted, reason, theirs = decide(cfg, data, version, ours)
        info.update(test_rows=len(y), decision="promoted" if promoted else "rejected")
    _record_decision(cfg, candidate.run_id, version, promoted, reason, theirs)
    log.info("[promote] %s", reason)
    return Judgement(version, promoted, reason, False)


def train(spark: SparkSession, cfg: Config, *, source: str, workers: int | None = None,
          promote_now: bool = True) -> TrainResult:
    import mlflow
    import mlflow.tensorflow
    from mlflow.models import infer_signature

    workers = workers or cfg.training.workers
    with stage("train: select snapshots") as info:
        data = dataset.select(spark, cfg, source)
        info.update(**{k: v for k, v in data.describe().items() if k.endswith("_rows")})
    experiment_id = tracking.setup(cfg)
    run_name = f"{cfg.model.type}-{source}-{data.eval_cutoff}"
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run:
        run_id = run.info.run_id
        params = tracking.flat_params(cfg)
        params.update({f"data.{k}": str(v) for k, v in data.describe().items()})
        params["training.workers"] = str(workers)
        mlflow.log_params(params)
        mlflow.set_tags({"source": source, "vocab_version": str(data.vocab_version), "model_type": cfg.model.type})

        with stage(f"train: fit ({workers} worker{'s' if workers > 1 else ''})") as info:
            if workers == 1:
                fitted = training.fit(cfg, data, on_epoch=_epoch_logger(run_id))
            else:
                from seqlake import distributed

                fitted = distributed.fit(spark, cfg, data, workers=workers, run_id=run_id)
            info.update(epochs=len(fitted.history), best_epoch=fitted.best_epoch,
                        samples_per_second=round(fitted.samples_per_second))
        model = training.model_from(cfg, data, fitted)

        with stage("train: evaluate model and baselines on the test split") as info:
            y, p = training.predict(model, data.test, cfg)
            rows = tables.read(spark, cfg, C.USER_SEQUENCES).filter(F.col(C.SOURCE) == source)
            scored = {"model": (y, p)}
            for b in baselines.fit_and_score(dataset.split_rows(rows, "train", data.train.cutoffs),
                                             dataset.split_rows(rows, "test", data.test.cutoffs), cfg.training):
                if len(b.labels) != len(y) or b.labels.sum() != y.sum():
                    raise dataset.RowCountMismatch(
                        f"baseline {b.name} scored {len(b.labels):,} test rows, the model {len(y):,}")
                scored[b.name] = (b.labels, b.scores)
            results = {name: evaluation.metrics(labels, scores) for name, (labels, scores) in scored.items()}
            info.update(test_rows=len(y), model_auc_roc=round(results["model"]["auc_roc"], 4),
                        best_baseline_auc_roc=round(max(results[b]["auc_roc"] for b in baselines.NAMES), 4))
        mlflow.log_metrics({f"test_{m}": v for m, v in results["model"].items()})
        mlflow.log_metrics({f"test_{name}_{m}": v for name, r in results.items() for m, v in r.items()})
        mlflow.log_metrics({"best_epoch": fitted.best_epoch, "train_samples_per_second": fitted.samples_per_second})
        with tempfile.TemporaryDirectory() as tmp:
            for path in evaluation.plots(scored, Path(tmp) / "plots"):
                mlflow.log_artifact(str(path), "plots")
        mlflow.log_dict({"source": source, "vocab_version": data.vocab_version, "input_dims": data.input_dims},
                        "vocab_version.json")
        mlflow.log_dict(dataclasses.asdict(cfg), "config.yaml")
        mlflow.log_dict({"data": data.describe(), "history": fitted.history, "test": results}, "training.json")

        with stage("train: log and register the model"):
            example = _example(data, cfg)
            signature = infer_signature(example, np.asarray(model(example, training=False)))
            info = mlflow.tensorflow.log_model(
                model, name="model", signature=signature, pip_requirements=tracking.pip_requirements(),
            )
            # The version and its provenance in one registry transaction: a run killed after it
            # never leaves a version that scoring or the gate could not use.
            provenance = {"source": source, "vocab_version": str(data.vocab_version), "model_type": cfg.model.type,
                          "eval_cutoff": str(data.eval_cutoff), "horizon_days": str(cfg.sequences.horizon_days)}
            if not promote_now:
                provenance["promotion"] = PENDING
            version = str(mlflow.register_model(info.model_uri, cfg.mlflow.registered_model, tags=provenance).version)

        mlflow.set_tag("model_version", version)
        if promote_now:
            promoted, reason = gate(cfg, data, run_id, version, results["model"])
        else:
            promoted, reason = False, f"version {version} is pending: `seqlake promote` applies the gate"
            mlflow.set_tag("promotion.decision", PENDING)
        log.info("[train] %s", reason)
    return TrainResult(run_id, experiment_id, version, promoted, reason, results, fitted.best_epoch,
                       len(fitted.history), data, fitted.samples_per_second)


def _example(data: dataset.TrainingData, cfg: Config) -> dict[str, np.ndarray]:
    """Five test rows as the signature's example (only the first batch is read, so unverified:
    it describes shapes and types, nothing is trained or scored on it)."""
    for batch in dataset.batches(data.test.files, expected_rows=data.test.rows, batch_size=5,
                                 pool=cfg.training.reader_pool, reader_workers=cfg.training.reader_workers):
        batch.pop("label")
        return batch
    raise dataset.NoTrainingData("the test split is empty")
