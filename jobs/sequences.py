"""spark-submit entry point: `spark-submit --packages io.delta:delta-spark_2.13:4.0.1 jobs/sequences.py --conf conf/local.yaml --date YYYY-MM-DD`.

Thin by design: the arguments are those of `seqlake sequences` (see `seqlake sequences --help`).
"""
import sys

from seqlake.cli import run_job

if __name__ == "__main__":
    sys.exit(run_job("sequences", sys.argv[1:]))
