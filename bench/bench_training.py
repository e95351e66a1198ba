"""Training throughput: Petastorm-fed epochs against the same model fed in-memory tensors.

On a lake with labelled ``user_sequences`` snapshots (``--lake``; by default one is built first
under ``--work`` from ``--users`` generated users: generate, ingest, sessionize, vocab, three
weekly snapshots, untimed), the train split is trained on twice per round, alternating:
  * petastorm: ``dataset.tf_dataset`` over the split's current Parquet files (the training
    path: Petastorm reader, row-count check, re-batching, prefetch);
  * in-memory: the same rows loaded once into numpy, ``tf.data.Dataset.from_tensor_slices``.
Same model, same step function, same batch size; one untimed warm-up epoch each (tracing).
It prints samples per second of each and the Petastorm / in-memory epoch time ratio (target
<= 1.2), and writes bench/results/training-<time>.{json,md}.

    .venv/bin/python bench/bench_training.py --users 10000 --rounds 3
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_ingest_sessionize import REPO, bench_settings, save_results  # noqa: E402

CUTOFFS = ("2024-01-08", "2024-01-22")


def build_lake(work: Path, users: int) -> None:
    if (work / "lake" / "user_sequences").exists():
        return
    seqlake = [sys.executable, "-m", "seqlake.cli"]
    settings = [a for s in [*bench_settings(work), f"generator.users={users}"] for a in ("--set", s)]
    for step in (["generate"], ["ingest", "--from", "2024-01-01", "--to", "2024-01-28"],
                 ["sessionize", "--from", "2024-01-01", "--to", "2024-01-28"],
                 ["vocab", "fit", "--from", "2024-01-01", "--to", "2024-01-08"],
                 ["sequences", "--from", CUTOFFS[0], "--to", CUTOFFS[1]]):
        print("prepare:", " ".join(step), flush=True)
        subprocess.run([*seqlake, *settings, *step], check=True, cwd=REPO, stdout=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="/tmp/seqlake-bench-training", help="scratch folder (its lake is reused)")
    parser.add_argument("--users", type=int, default=10000, help="generated users when the lake is built")
    parser.add_argument("--rounds", type=int, default=3, help="timed epochs of each feed")
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    work = Path(args.work)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    build_lake(work, args.users)

    from seqlake import dataset, training
    from seqlake.config import load_config
    from seqlake.spark import build_spark

    cfg = load_config(REPO / "conf" / "local.yaml", [*bench_settings(work), f"training.batch_size={args.batch_size}"])
    spark = build_spark(cfg)
    data = dataset.select(spark, cfg, cfg.source)
    spark.stop()  # the JVM idles from here: TensorFlow has the cores to itself
    training.quiet_tensorflow()
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(1)
    model = training.build(cfg, data)
    optimizer = keras.optimizers.Adam(1e-3)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(keras.losses.binary_crossentropy(tf.reshape(y, (-1, 1)), model(x, training=True)))
        optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
        return loss

    split = data.train
    arrays = dataset.load_arrays(split)
    labels = arrays.pop("label")
    in_memory = tf.data.Dataset.from_tensor_slices((arrays, labels)).batch(args.batch_size).prefetch(tf.data.AUTOTUNE)

    def petastorm_epoch() -> int:
        feed = dataset.tf_dataset(split.files, expected_rows=split.rows, batch_size=args.batch_size, length=data.length,
                                  pool=cfg.training.reader_pool, reader_workers=cfg.training.reader_workers,
                                  seed=None, repeat=False)
        n = 0
        for x, y in feed:
            step(x, y)
            n += int(y.shape[0])
        return n

    def memory_epoch() -> int:
        n = 0
        for x, y in in_memory:
            step(x, y)
            n += int(y.shape[0])
        return n

    feeds = {"petastorm": petastorm_epoch, "in_memory": memory_epoch}
    for name, epoch in feeds.items():  # warm-up: tracing, caches
        assert epoch() == split.rows, name
    seconds: dict[str, list[float]] = {name: [] for name in feeds}
    for r in range(args.rounds):
        for name, epoch in feeds.items():
            start = time.perf_counter()
            rows = epoch()
            seconds[name].append(time.perf_counter() - start)
            assert rows == split.rows
            print(f"round {r + 1}: {name} {seconds[name][-1]:.2f}s", flush=True)
    median = {name: statistics.median(s) for name, s in seconds.items()}
    ratio = median["petastorm"] / median["in_memory"]
    result = {"rows": split.rows, "batch_size": args.batch_size, "length": data.length, "seconds": seconds,
              "median_seconds": median, "ratio": ratio, "model": cfg.model.type}
    table = "\n".join([
        f"training throughput: {split.rows:,} rows x {data.length} events, batch {args.batch_size}, {cfg.model.type}",
        "| feed | median epoch s | samples/s |", "| --- | --- | --- |",
        *[f"| {n} | {median[n]:.2f} | {split.rows / median[n]:,.0f} |" for n in feeds],
        f"petastorm / in-memory epoch time: {ratio:.2f} (target <= 1.2)",
    ])
    save_results("training", result, table)


if __name__ == "__main__":
    main()
