"""spark-submit entry point: `spark-submit --packages io.delta:delta-spark_2.13:4.0.1 jobs/profiles.py --conf conf/local.yaml --date YYYY-MM-DD`.

Thin by design: the arguments are those of `seqlake profile` (see `seqlake profile --help`).
Not `profile.py`: spark-submit puts this folder first on sys.path, where that name would shadow
the standard library's `profile` module (which cProfile imports).
"""
import sys

from seqlake.cli import run_job

if __name__ == "__main__":
    sys.exit(run_job("profile", sys.argv[1:]))
