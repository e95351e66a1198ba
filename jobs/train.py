"""spark-submit entry point: `spark-submit --packages io.delta:delta-spark_2.13:4.0.1 jobs/train.py --conf conf/local.yaml [--workers N]`.

Thin by design: the arguments are those of `seqlake train` (see `seqlake train --help`).
"""
import sys

from seqlake.cli import run_job

if __name__ == "__main__":
    sys.exit(run_job("train", sys.argv[1:]))
