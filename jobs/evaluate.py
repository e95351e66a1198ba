"""spark-submit entry point: `spark-submit --packages io.delta:delta-spark_2.13:4.0.1 jobs/evaluate.py --conf conf/local.yaml --date YYYY-MM-DD`.

Thin by design: the arguments are those of `seqlake evaluate` (see `seqlake evaluate --help`).
"""
import sys

from seqlake.cli import run_job

if __name__ == "__main__":
    sys.exit(run_job("evaluate", sys.argv[1:]))
