"""``seqlake evaluate --date D``: the realised performance of the scores of day D.

Once the horizon of D's scores has passed (sessionized events reach D + horizon_days), each
scored user's outcome is whether they purchased in [D + 1, D + horizon_days]. Realised AUC-ROC
and AUC-PR (Spark ML's evaluator, distributed), log loss, Brier score, and per decile the mean
propensity, the purchase rate and the lift are written to ``propensity_evaluation`` (replacing
D's rows) and logged as an MLflow run with calibration and lift plots: the model's real-world
performance over time. Only per-decile rows (10) reach the driver.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import tempfile
from pathlib import Path

import numpy as np
import pyspark.sql.functions as F
from pyspark.sql import DataFrame, SparkSession

from seqlake import constants as C
from seqlake import schemas, sessionize, state, tables, tracking
from seqlake.config import Config
from seqlake.progress import stage

EPS = 1e-7


class NothingToEvaluate(RuntimeError):
    """D was not scored, or its outcomes are not known yet."""


@dataclasses.dataclass(frozen=True)
class EvaluationResult:
    source: str
    score_date: dt.date
    users: int
    buyers: int
    auc_roc: float | None
    auc_pr: float | None
    log_loss: float
    brier: float
    lift_top_decile: float | None
    mlflow_run_id: str


def with_outcomes(scores: DataFrame, events: DataFrame, *, day: dt.date, horizon_days: int) -> DataFrame:
    """Add ``bought`` (0/1): a purchase by the user in [day + 1, day + horizon_days]."""
    first, last = day + dt.timedelta(days=1), day + dt.timedelta(days=horizon_days)
    buyers = (
        events.filter((F.col(C.EVENT_TYPE) == "purchase") & F.col(C.EVENT_DATE).between(F.lit(first), F.lit(last)))
        .select(*state.KEY)
        .distinct()
        .withColumn("_buyer", F.lit(1))
    )
    return scores.join(buyers, on=state.KEY, how="left").withColumn(
        "bought", F.coalesce(F.col("_buyer"), F.lit(0)).cast("int")).drop("_buyer")


def evaluate(spark: SparkSession, cfg: Config, *, source: str, day: dt.date) -> EvaluationResult:
    import mlflow
    from pyspark.ml.evaluation import BinaryClassificationEvaluator

    from seqlake import evaluation

    where = f"source = '{source}' AND score_date = '{day}'"
    if not tables.has_rows(spark, cfg, C.USER_PROPENSITY, where):
        raise NothingToEvaluate(f"no scores of source {source!r} for {day}; run `seqlake score --date {day}` first")
    scores = tables.read(spark, cfg, C.USER_PROPENSITY).filter(where)
    meta = scores.select("horizon_days", "model_version").first()
    horizon, model_version = meta["horizon_days"], meta["model_version"]
    last_needed = day + dt.timedelta(days=horizon)
    through = sessionize.sessionized_through(spark, cfg, source)
    if through is None or through < last_needed:
        raise NothingToEvaluate(
            f"the outcomes of {day}'s scores need sessionized events up to {last_needed} (horizon {horizon} days), "
            f"but they reach {through or 'no day'}; evaluate {day} after {last_needed} has been sessionized"
        )
    with stage(f"evaluate: scores of {day} against purchases up to {last_needed}") as info:
        labelled = with_outcomes(scores.select(*state.KEY, "propensity", "decile"),
                                 state.session_events(spark, cfg, source), day=day, horizon_days=horizon).cache()
        p = F.least(F.greatest(F.col("propensity"), F.lit(EPS)), F.lit(1 - EPS))
        y = F.col("bought")
        total = labelled.agg(
            F.count(F.lit(1)).alias("n"), F.sum(y).alias("buyers"),
            F.mean(-(y * F.log(p) + (1 - y) * F.log(1 - p))).alias("log_loss"),
            F.mean(F.pow(F.col("propensity") - y, 2)).alias("brier"),
        ).first()
        n, buyers = total["n"], total["buyers"] or 0
        base_rate = buyers / n
        auc_roc = auc_pr = None
        if 0 < buyers < n:
            frame = labelled.select(F.col("propensity").alias("score"), y.cast("double").alias("label"))
            evaluator = BinaryClassificationEvaluator(rawPredictionCol="score", labelCol="label")
            auc_roc = evaluator.evaluate(frame, {evaluator.metricName: "areaUnderROC"})
            auc_pr = evaluator.evaluate(frame, {evaluator.metricName: "areaUnderPR"})
        deciles = (
            labelled.groupBy("decile")
            .agg(F.count(F.lit(1)).alias("users"), F.sum(y).cast("long").alias("buyers"),
                 F.mean("propensity").alias("mean_propensity"), F.mean(y.cast("double")).alias("purchase_rate"))
            .orderBy("decile")
            .collect()  # ten rows
        )
        labelled.unpersist()
        rows = [
            (source, day, r["decile"], r["users"], r["buyers"], float(r["mean_propensity"]), float(r["purchase_rate"]),
             float(r["purchase_rate"]) / base_rate if base_rate > 0 else None, auc_roc, auc_pr,
             float(total["log_loss"]), float(total["brier"]), base_rate, horizon, model_version)
            for r in deciles
        ]
        tables.replace_where(spark.createDataFrame(rows, schemas.PROPENSITY_EVALUATION), cfg,
                             C.PROPENSITY_EVALUATION, where, partition_by=[C.SOURCE])
        top_lift = rows[0][7] if rows and rows[0][2] == 1 else None
        info.update(users=n, buyers=buyers, auc_roc=None if auc_roc is None else round(auc_roc, 4))

    experiment_id = tracking.setup_experiment(cfg, cfg.mlflow.scoring_experiment)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"evaluate-{source}-{day}") as run:
        mlflow.log_params({"score_date": day.isoformat(), "source": source, "model_version": model_version,
                           "horizon_days": horizon})
        mlflow.set_tags({"stage": "evaluate", "source": source, "score_date": day.isoformat()})
        metrics = {"realised_users": n, "realised_buyers": buyers, "realised_base_rate": base_rate,
                   "realised_log_loss": float(total["log_loss"]), "realised_brier": float(total["brier"])}
        for name, value in (("realised_auc_roc", auc_roc), ("realised_auc_pr", auc_pr),
                            ("realised_lift_top_decile", top_lift)):
            if value is not None:
                metrics[name] = value
        mlflow.log_metrics(metrics)
        with tempfile.TemporaryDirectory() as tmp:
            for path in evaluation.decile_plots(np.array([r[5] for r in rows]), np.array([r[6] for r in rows]),
                                                base_rate, Path(tmp), title=f"scores of {day}"):
                mlflow.log_artifact(str(path), "plots")
        mlflow_run_id = run.info.run_id
    return EvaluationResult(source, day, n, buyers, auc_roc, auc_pr, float(total["log_loss"]), float(total["brier"]),
                            top_lift, mlflow_run_id)
