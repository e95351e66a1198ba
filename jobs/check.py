"""spark-submit entry point: `spark-submit --packages io.delta:delta-spark_2.13:4.0.1 jobs/check.py --conf conf/local.yaml --date YYYY-MM-DD`.

Thin by design: the arguments are those of `seqlake check` (see `seqlake check --help`).
"""
import sys

from seqlake.cli import run_job

if __name__ == "__main__":
    sys.exit(run_job("check", sys.argv[1:]))
