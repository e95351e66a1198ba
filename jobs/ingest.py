"""spark-submit entry point: `spark-submit jobs/ingest.py --conf conf/local.yaml --date YYYY-MM-DD`.

Thin by design: the arguments are those of `seqlake ingest` (see `seqlake ingest --help`).
"""
import sys

from seqlake.cli import main

if __name__ == "__main__":
    argv = sys.argv[1:]
    # Global options (--conf, --set, -v) go before the subcommand; the rest after it.
    global_args, stage_args, i = [], [], 0
    while i < len(argv):
        if argv[i] in ("--conf", "--set"):
            global_args += argv[i : i + 2]
            i += 2
        elif argv[i] in ("-v", "--verbose"):
            global_args.append(argv[i])
            i += 1
        else:
            stage_args.append(argv[i])
            i += 1
    sys.exit(main([*global_args, "ingest", *stage_args]))
