"""Classic baselines on the aggregate (RFM-style) features, fitted and scored in Spark.

Same rows as the model: fitted on the train split of the training snapshots, scored on the
test split of the evaluation snapshot.

* ``logistic_regression``: Spark ML logistic regression on log1p(aggregates), standardised.
* ``gbt``: Spark ML gradient-boosted trees on the same features.
* ``recency``: the purchase rate of training users with the same whole days since their last
  event (capped at 60), smoothed towards the overall rate: recency alone, as a probability.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pyspark.sql.functions as F
from pyspark.sql import DataFrame

from seqlake.config import TrainingConfig
from seqlake.dataset import AGGREGATES

NAMES = ("logistic_regression", "gbt", "recency")
_RECENCY_CAP = 60
_SMOOTHING = 20.0  # pseudo-users at the overall rate per recency day


@dataclasses.dataclass(frozen=True)
class BaselineScores:
    name: str
    labels: np.ndarray
    scores: np.ndarray


def _features(rows: DataFrame) -> DataFrame:
    return rows.select(
        "user_id", F.col("label").cast("double").alias("label"), "recency_days",
        *[F.log1p(F.greatest(F.col(c).cast("double"), F.lit(0.0))).alias(f"f_{c}") for c in AGGREGATES],
    )


def _collect(scored: DataFrame, name: str) -> BaselineScores:
    # The test split only: two numbers per test user reach the driver.
    local = scored.select("label", "score").toPandas()
    return BaselineScores(name, local["label"].to_numpy(np.float64), local["score"].to_numpy(np.float64))


def _linear_probability(fitted) -> F.Column:
    """The fitted logistic regression as a built-in expression over the feature columns.

    Not ``model.transform``: Spark 4.0's LogisticRegressionModel keeps its training summary,
    which holds the SparkSession, and its prediction UDF then fails to serialise (Task not
    serializable: ObservationManager) once the session has run an ``observe``."""
    scaler, lr = fitted.stages[1], fitted.stages[2]
    mean, std = scaler.mean.toArray(), scaler.std.toArray()
    weights = lr.coefficients.toArray()
    z = F.lit(float(lr.intercept))
    for c, m, sd, w in zip(AGGREGATES, mean, std, weights):
        if sd > 0:
            z = z + F.lit(float(w / sd)) * (F.col(f"f_{c}") - F.lit(float(m)))
    return F.lit(1.0) / (F.lit(1.0) + F.exp(-z))


def fit_and_score(train: DataFrame, test: DataFrame, settings: TrainingConfig) -> list[BaselineScores]:
    from pyspark.ml import Pipeline
    from pyspark.ml.classification import GBTClassifier, LogisticRegression
    from pyspark.ml.feature import StandardScaler, VectorAssembler
    from pyspark.ml.functions import vector_to_array

    train_f = _features(train).cache()
    test_f = _features(test).cache()
    assemble = VectorAssembler(inputCols=[f"f_{c}" for c in AGGREGATES], outputCol="raw_features")
    scale = StandardScaler(inputCol="raw_features", outputCol="features", withMean=True, withStd=True)
    models = {
        "logistic_regression": LogisticRegression(maxIter=100, regParam=1e-3, featuresCol="features"),
        "gbt": GBTClassifier(maxIter=settings.gbt_max_iter, maxDepth=settings.gbt_max_depth,
                             seed=settings.seed, featuresCol="features"),
    }
    out = []
    for name, estimator in models.items():
        fitted = Pipeline(stages=[assemble, scale, estimator]).fit(train_f)
        if name == "logistic_regression":
            scored = test_f.withColumn("score", _linear_probability(fitted))
        else:
            scored = fitted.transform(test_f).withColumn("score", vector_to_array("probability")[1])
        out.append(_collect(scored, name))

    base = train_f.agg(F.avg("label").alias("rate")).first()["rate"]
    day = F.least(F.floor("recency_days"), F.lit(_RECENCY_CAP)).alias("day")
    rates = train_f.groupBy(day).agg(
        ((F.sum("label") + F.lit(_SMOOTHING * base)) / (F.count(F.lit(1)) + F.lit(_SMOOTHING))).alias("score")
    )
    scored = test_f.select("label", day).join(F.broadcast(rates), "day", "left").select(
        "label", F.coalesce("score", F.lit(base)).alias("score")
    )
    out.append(_collect(scored, "recency"))
    train_f.unpersist()
    test_f.unpersist()
    return out
