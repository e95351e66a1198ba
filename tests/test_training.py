"""Training end to end on generated data with the planted sequential signal: verified Petastorm
reads, the MLflow run and registry, the champion gate, 1 vs 2 workers, and the quality bar
against the generator's oracle and the baselines."""
from __future__ import annotations

import csv
import dataclasses
import glob
import sys
from pathlib import Path

import numpy as np
import pytest

from seqlake import constants as C
from seqlake import dataset, evaluation, sequences, tables, train, training, vocab

from conftest import CUTOFFS

pytestmark = pytest.mark.slow

# Issue 4's bar: the model's test AUC at least the oracle's minus 0.03. On this set the oracle
# is 0.839 on the ~930 test users; the model reached 0.812-0.827 over seeds 42, 1 and 2 and two
# learning rates (gap 0.012-0.027), the best baseline about 0.74.
ORACLE_GAP = 0.03


@pytest.fixture(scope="module")
def lake(signal_lake):
    return signal_lake


@pytest.fixture(scope="module")
def first_training(spark, lake):
    """The lake's first training (one worker, the default): registered, and champion because
    there was none. A training takes minutes, so the tests that read one share it."""
    cfg, _ = lake
    return train.train(spark, cfg, source="generator")


def truth(cfg) -> dict[str, tuple[float, int]]:
    path = Path(cfg.lake.landing_root) / "truth" / "generator" / "ground_truth.csv"
    with open(path, newline="") as handle:
        return {r["user_id"]: (float(r["p_true"]), int(r["label"])) for r in csv.DictReader(handle)}


def test_readers_deliver_exactly_the_tables_rows_and_refuse_short_reads(spark, lake):
    cfg, _ = lake
    data = dataset.select(spark, cfg, "generator")
    assert data.train.cutoffs == tuple(CUTOFFS) and data.eval_cutoff == CUTOFFS[-1]
    table = tables.read(spark, cfg, C.USER_SEQUENCES)
    for split in (data.train, data.validation, data.test):
        rows = table.filter(f"split = '{split.split}'").filter(
            table.snapshot_date.isin(list(split.cutoffs)))
        assert split.rows == rows.count() > 0
        assert split.positives == rows.agg({"label": "sum"}).first()[0]
    arrays = dataset.load_arrays(data.test)
    assert len(arrays["label"]) == data.test.rows and arrays["label"].sum() == data.test.positives
    assert arrays["item"].shape == (data.test.rows, cfg.sequences.length) and arrays["item"].dtype == np.int32
    assert arrays["aggregates"].shape == (data.test.rows, len(dataset.AGGREGATES))
    # Left-padded: the true length's last positions hold events, the rest is 0.
    lengths = (arrays["item"] != 0).sum(axis=1)
    assert (lengths >= 1).all() and all((row[: len(row) - n] == 0).all() for row, n in zip(arrays["item"], lengths))

    # One file fewer than the table holds: the pass fails loudly instead of training on less.
    with pytest.raises(dataset.RowCountMismatch, match="delivered"):
        for _ in dataset.batches(data.test.files[1:], expected_rows=data.test.rows, batch_size=64):
            pass

    # After the snapshot is rewritten, the superseded files stay on disk (Delta keeps them for
    # time travel) but readers list only the current ones.
    v = vocab.load(spark, cfg, "generator")
    sequences.build_snapshot(spark, cfg, source="generator", cutoff=CUTOFFS[-1], vocabulary=v)
    again = dataset.select(spark, cfg, "generator")
    folder = Path(cfg.table_path(C.USER_SEQUENCES)) / "source=generator" / f"snapshot_date={CUTOFFS[-1]}" / "split=test"
    on_disk = glob.glob(str(folder / "*.parquet"))
    assert not set(again.test.files) & set(data.test.files)
    assert len(on_disk) == len(again.test.files) + len(data.test.files)
    assert len(dataset.load_arrays(again.test)["label"]) == again.test.rows == data.test.rows


def test_a_rerun_with_the_same_seed_gives_the_same_metrics(spark, lake):
    cfg, _ = lake
    cfg = dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, epochs=2, patience=5))
    data = dataset.select(spark, cfg, "generator")
    first = training.fit(cfg, data)
    second = training.fit(cfg, data)
    for a, b in zip(first.history, second.history, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-3)
        assert a["val_auc_roc"] == pytest.approx(b["val_auc_roc"], abs=1e-3)


def test_transformer_trains_on_the_same_inputs(spark, lake):
    cfg, _ = lake
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, type="transformer"),
                              training=dataclasses.replace(cfg.training, epochs=2, patience=5))
    data = dataset.select(spark, cfg, "generator")
    fitted = training.fit(cfg, data)
    model = training.model_from(cfg, data, fitted)
    assert model.name == "seqlake_transformer"
    y, p = training.predict(model, data.test, cfg)
    assert len(y) == data.test.rows
    assert evaluation.metrics(y, p)["auc_roc"] > 0.75  # learned something (random: 0.5)


def test_training_run_registry_and_quality_bar(spark, lake, first_training):
    import mlflow
    import mlflow.tensorflow
    from mlflow import MlflowClient

    from seqlake import tracking

    cfg, summary = lake
    result = first_training
    tracking.setup(cfg)
    client = MlflowClient()
    run = client.get_run(result.run_id)

    # The run: full config as params, per-epoch metrics, test metrics of model and baselines,
    # plots and the vocab version as artifacts.
    assert run.data.params["model.type"] == "lstm"
    assert run.data.params["training.batch_size"] == "128"
    assert run.data.params["data.eval_cutoff"] == str(CUTOFFS[-1])
    epochs = client.get_metric_history(result.run_id, "val_auc_pr")
    assert [m.step for m in epochs] == list(range(1, result.epochs_run + 1))
    for scorer in ("model", "logistic_regression", "gbt", "recency"):
        for metric in ("auc_roc", "auc_pr", "log_loss", "brier", "lift_top_decile"):
            assert f"test_{scorer}_{metric}" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(result.run_id, "plots")}
    assert artifacts == {f"plots/{n}.png" for n in ("roc", "precision_recall", "calibration", "decile_lift",
                                                  "score_distribution")}
    vocab_info = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/vocab_version.json")
    assert vocab_info["vocab_version"] == result.data.vocab_version == 1
    assert run.data.tags["vocab_version"] == "1"

    # Registered, and champion because there was none; the registered model scores like the
    # in-process one, and returns calibrated probabilities (mean close to the positive rate).
    assert result.promoted and result.model_version == "1"
    champion = client.get_model_version_by_alias(cfg.mlflow.registered_model, "champion")
    assert str(champion.version) == "1" and champion.tags["vocab_version"] == "1"
    loaded = mlflow.tensorflow.load_model(f"models:/{cfg.mlflow.registered_model}@champion")
    y, p = training.predict(loaded, result.data.test, cfg)
    assert evaluation.metrics(y, p)["auc_roc"] == pytest.approx(result.test_metrics["model"]["auc_roc"], abs=1e-6)
    assert abs(p.mean() - y.mean()) < 0.05

    # Quality bar on the label window (the generator's ground truth holds for this cutoff).
    known = truth(cfg)
    rows = tables.read(spark, cfg, C.USER_SEQUENCES).filter(
        f"split = 'test' AND snapshot_date = '{CUTOFFS[-1]}'").select("user_id", "label").collect()
    assert all(known[r["user_id"]][1] == r["label"] for r in rows)  # our labels are the generator's
    oracle = evaluation.metrics(np.array([r["label"] for r in rows]),
                                np.array([known[r["user_id"]][0] for r in rows]))["auc_roc"]
    model_auc = result.test_metrics["model"]["auc_roc"]
    best_baseline = max(result.test_metrics[b]["auc_roc"] for b in ("logistic_regression", "gbt", "recency"))
    print(f"\nquality: model {model_auc:.4f} oracle {oracle:.4f} best baseline {best_baseline:.4f} "
          f"({len(rows)} test users)", file=sys.stderr)
    assert model_auc >= oracle - ORACLE_GAP, (model_auc, oracle)
    assert model_auc >= best_baseline + 0.02, (model_auc, best_baseline)


def test_a_worse_model_never_becomes_champion(spark, lake, first_training):
    from mlflow import MlflowClient

    from seqlake import tracking

    cfg, _ = lake
    tracking.setup(cfg)
    client = MlflowClient()
    before = client.get_model_version_by_alias(cfg.mlflow.registered_model, "champion").version
    # A learning rate that leaves the model near its initialisation: clearly worse.
    worse = dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, learning_rate=1e-7, epochs=1))
    result = train.train(spark, worse, source="generator")
    assert not result.promoted
    assert client.get_model_version_by_alias(cfg.mlflow.registered_model, "champion").version == before
    run = client.get_run(result.run_id)
    assert run.data.tags["promotion.decision"] == "rejected"
    assert "does not beat champion" in run.data.tags["promotion.reason"]
    assert run.data.metrics["champion_test_auc_pr"] > result.test_metrics["model"]["auc_pr"]


def test_two_workers_reach_the_single_worker_validation_auc(spark, lake, first_training):
    cfg, _ = lake
    one = first_training  # workers=1
    assert cfg.training.workers == 1
    two = train.train(spark, cfg, source="generator", workers=2)
    best = lambda r: max(h["val_auc_roc"] for h in _history(r))  # noqa: E731
    assert abs(best(two) - best(one)) <= 0.02, (best(one), best(two))


def _history(result: train.TrainResult) -> list[dict]:
    import mlflow

    from mlflow import MlflowClient

    run = MlflowClient().get_run(result.run_id)
    return mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/training.json")["history"]
