"""Scoring throughput: the Spark scoring pass against the same model's predict in memory.

On a lake with a champion and a user state (``--lake``-style scratch folder ``--work``; built
first from ``--users`` generated users: generate, ingest, sessionize, vocab, snapshots, train,
state, all untimed), each round times, alternating:
  * spark: ``scoring.scoring_inputs`` from ``user_state`` -> ``mapInArrow(score_batches)`` on
    ``local[2]``, materialised (the scoring pass of ``seqlake score``: Arrow batches, the model
    loaded once per Python worker), without reasons;
  * in-memory: the same inputs already held as numpy arrays, the same model's forward pass over
    batches of the same size, in this process;
  * spark + reasons: the spark pass with occlusion reasons (their cost per user).
It prints users per second of each, the spark / in-memory time ratio (target <= 2) and the
reasons' extra milliseconds per user, and writes bench/results/scoring-<time>.{json,md}.
The whole ``seqlake score`` job (writes, ranks, monitoring, MLflow) is timed once at the end.

    .venv/bin/python bench/bench_scoring.py --users 20000 --rounds 3
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_ingest_sessionize import REPO, bench_settings, save_results  # noqa: E402
from bench_training import build_lake  # noqa: E402

DAY = dt.date(2024, 1, 27)


def prepare(work: Path, users: int) -> None:
    build_lake(work, users)
    if (work / "lake" / "user_state").exists():
        return
    seqlake = [sys.executable, "-m", "seqlake.cli"]
    settings = [a for s in [*bench_settings(work), "training.epochs=3"] for a in ("--set", s)]
    for step in (["train"], ["state", "--date", DAY.isoformat()]):
        print("prepare:", " ".join(step), flush=True)
        subprocess.run([*seqlake, *settings, *step], check=True, cwd=REPO, stdout=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="/tmp/seqlake-bench-scoring", help="scratch folder (its lake is reused)")
    parser.add_argument("--users", type=int, default=20000, help="generated users when the lake is built")
    parser.add_argument("--rounds", type=int, default=3, help="timed passes of each variant")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting for the timed passes, e.g. scoring.batch_rows=4096 (repeatable)")
    parser.add_argument("--copies", type=int, default=5,
                        help="score the users' inputs this many times over in each pass (more rows per pass "
                             "without a bigger lake; fixed per-job costs weigh less)")
    args = parser.parse_args()
    work = Path(args.work)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    prepare(work, args.users)

    import numpy as np
    import pyspark.sql.functions as F

    from seqlake import constants as C
    from seqlake import scoring, tables
    from seqlake.config import load_config
    from seqlake.spark import build_spark

    cfg = load_config(REPO / "conf" / "local.yaml", [*bench_settings(work), *args.overrides])
    spark = build_spark(cfg)
    champ = scoring.champion(cfg, cfg.source)
    vocabulary = scoring._check_inputs(spark, cfg, champ, DAY)
    user_state = tables.read(spark, cfg, C.USER_STATE).filter(F.col(C.SOURCE) == cfg.source)
    once = scoring.scoring_inputs(user_state, day=DAY, vocabulary=vocabulary, cfg=cfg)
    inputs = once
    for _ in range(args.copies - 1):
        inputs = inputs.unionByName(once)
    inputs = inputs.repartition(scoring.input_partitions(cfg), C.USER_ID).sortWithinPartitions(C.USER_ID).cache()
    users = inputs.count()
    import tempfile

    model_dir = scoring._download_model(spark, champ, Path(tempfile.mkdtemp(prefix="seqlake-bench-")))
    known = 2 + vocabulary.oov_buckets["item_id"]
    explainer = scoring._explainer(vocabulary, cfg.scoring)
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(cfg.scoring.batch_rows))

    def spark_pass(explain: bool):
        def run() -> int:
            fn = scoring.score_batches(model_dir, length=cfg.sequences.length, known_item_from=known,
                                       explainer=explainer if explain else None, tf_threads=cfg.scoring.tf_threads)
            out = inputs.mapInArrow(fn, scoring.SCORED)
            out.write.format("noop").mode("overwrite").save()
            return users
        return run

    # In memory: the same rows as numpy (collected for the benchmark only), the same model.
    arrays = scoring.batch_arrays(inputs.toArrow(), cfg.sequences.length)
    import mlflow.artifacts

    model = scoring._model(mlflow.artifacts.download_artifacts(f"models:/{champ.name}/{champ.version}"), None)

    def memory_pass() -> int:
        n = 0
        for start in range(0, users, cfg.scoring.batch_rows):
            batch = {k: v[start:start + cfg.scoring.batch_rows] for k, v in arrays.items()}
            n += len(np.asarray(model._seqlake_forward(batch)))
        return n

    variants = {"spark": spark_pass(False), "in_memory": memory_pass, "spark_with_reasons": spark_pass(True)}
    for name, fn in variants.items():  # warm-up: Python workers, model loads, tracing
        assert fn() == users, name
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(args.rounds):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            seconds[name].append(time.perf_counter() - start)
            print(f"round {r + 1}: {name} {seconds[name][-1]:.2f}s", flush=True)
    median = {name: statistics.median(s) for name, s in seconds.items()}
    ratio = median["spark"] / median["in_memory"]
    reasons_ms = 1000 * (median["spark_with_reasons"] - median["spark"]) / users

    start = time.perf_counter()
    job = scoring.score(spark, cfg, source=cfg.source, day=DAY)
    job_seconds = time.perf_counter() - start
    spark.stop()
    result = {"rows": users, "copies": args.copies, "batch_rows": cfg.scoring.batch_rows, "length": cfg.sequences.length,
              "seconds": seconds, "median_seconds": median, "ratio_spark_to_memory": ratio,
              "reasons_ms_per_user": reasons_ms, "job_seconds": job_seconds, "job_model_loads": job.model_loads,
              "job_batches": job.batches}
    table = "\n".join([
        f"scoring throughput: {users:,} rows ({args.copies} x the day's users) x {cfg.sequences.length} events, "
        f"Arrow batches of "
        f"{cfg.scoring.batch_rows}, local[2]",
        "| variant | median s | users/s |", "| --- | --- | --- |",
        *[f"| {n} | {median[n]:.2f} | {users / median[n]:,.0f} |" for n in variants],
        f"spark / in-memory time: {ratio:.2f} (target <= 2.0)",
        f"reasons: {reasons_ms:.2f} ms per user on top of scoring (max {cfg.scoring.explain_max_groups} groups)",
        f"whole `seqlake score` job (with reasons, ranks, writes, monitoring, MLflow): {job_seconds:.1f}s, "
        f"{job.model_loads} model loads for {job.batches} batches",
    ])
    save_results("scoring", result, table)


if __name__ == "__main__":
    main()
