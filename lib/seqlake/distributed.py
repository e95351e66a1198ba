"""N TensorFlow workers as one Spark barrier stage (``seqlake train --workers N``).

Each barrier task picks a free port on its executor's host, ``allGather`` gives every task the
full worker list, and the task runs one worker in a child process (``python -m
seqlake.distributed``) with that ``TF_CONFIG``: a fresh process per training, because
TensorFlow's collective runtime can be configured once per process and Spark reuses its Python
workers. The workers run ``training.fit`` under ``MultiWorkerMirroredStrategy``, each on its own
shard of the training files; the chief (worker 0) logs per-epoch metrics to the MLflow run and
hands its weights back through the stage's result. The driver does the rest (evaluation,
registry), so only the chief ever writes to MLflow.

On a cluster the executors need this package installed and read access to the lake, and at
least N task slots must be free (a barrier stage starts all its tasks at once or none).
"""
from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys
import tempfile
import threading
import time

from pyspark.sql import SparkSession

from seqlake import dataset, training
from seqlake.config import Config, ConfigError


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _task(payload: bytes):
    from pyspark import BarrierTaskContext

    context = BarrierTaskContext.get()
    rank = context.partitionId()
    host = context.getTaskInfos()[rank].address.rsplit(":", 1)[0]
    workers = context.allGather(f"{host}:{_free_port(host)}")
    env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": rank}}))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    with tempfile.TemporaryDirectory(prefix="seqlake-worker-") as tmp:
        request, result = os.path.join(tmp, "request.pkl"), os.path.join(tmp, "result.pkl")
        with open(request, "wb") as handle:
            handle.write(payload)
        child = subprocess.run([sys.executable, "-m", "seqlake.distributed", request, result], env=env,
                               stdout=sys.stderr, stderr=subprocess.PIPE, text=True)
        if child.returncode != 0:
            raise RuntimeError(f"training worker {rank} of {len(workers)} failed (exit {child.returncode}):\n"
                               + child.stderr[-4000:])
        sys.stderr.write(child.stderr[-2000:])
        if rank == 0:
            with open(result, "rb") as handle:
                yield handle.read()


def fit(spark: SparkSession, cfg: Config, data: dataset.TrainingData, *, workers: int, run_id: str) -> training.FitResult:
    context = spark.sparkContext
    if context.defaultParallelism < workers:
        raise ConfigError(f"--workers {workers}: the Spark application has {context.defaultParallelism} task slots; "
                          f"a barrier stage needs one per worker")
    if len(data.train.files) < workers:
        raise dataset.NoTrainingData(f"{len(data.train.files)} training file(s) for {workers} workers: raise "
                                     f"sequences.files_per_snapshot and rebuild the snapshots")
    shard_rows = sum(dataset.file_rows(dataset.shard(data.train.files, i, workers)) for i in range(workers))
    if shard_rows != data.train.rows:
        raise dataset.RowCountMismatch(f"the training files hold {shard_rows:,} rows, the table {data.train.rows:,}")
    payload = pickle.dumps({"cfg": cfg, "data": data, "run_id": run_id, "tracking_uri": cfg.mlflow_tracking_uri()})
    results = context.parallelize(range(workers), workers).barrier().mapPartitions(lambda _: _task(payload)).collect()
    if len(results) != 1:
        raise RuntimeError(f"expected the chief's result, got {len(results)}")
    return pickle.loads(results[0])


def _exit_with_parent() -> None:
    # A worker whose Spark task died would wait for its peers forever in a collective op.
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(2)
            if os.getppid() != parent:
                os._exit(3)

    threading.Thread(target=watch, daemon=True).start()


def main(request: str, result: str) -> None:
    _exit_with_parent()
    training.quiet_tensorflow()
    import tensorflow as tf

    from seqlake.progress import configure_logging

    configure_logging()
    import logging

    logging.getLogger("tensorflow").setLevel(logging.WARNING)  # one INFO line per all-reduce otherwise
    with open(request, "rb") as handle:
        job = pickle.load(handle)
    spec = json.loads(os.environ["TF_CONFIG"])
    rank, workers = spec["task"]["index"], len(spec["cluster"]["worker"])
    strategy = tf.distribute.MultiWorkerMirroredStrategy()  # before any other TensorFlow op
    on_epoch = None
    if rank == 0:
        import mlflow

        mlflow.set_tracking_uri(job["tracking_uri"])
        from seqlake.train import _epoch_logger

        on_epoch = _epoch_logger(job["run_id"])
    fitted = training.fit(job["cfg"], job["data"], worker=rank, workers=workers, strategy=strategy, on_epoch=on_epoch)
    if rank == 0:
        with open(result, "wb") as handle:
            pickle.dump(fitted, handle)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
