"""spark-submit entry point: `spark-submit --packages io.delta:delta-spark_2.13:4.0.1 jobs/promote.py --conf conf/local.yaml --labelled-until YYYY-MM-DD`.

Thin by design: the arguments are those of `seqlake promote` (see `seqlake promote --help`).
"""
import sys

from seqlake.cli import run_job

if __name__ == "__main__":
    sys.exit(run_job("promote", sys.argv[1:]))
