"""The ``seqlake`` command line: one subcommand per pipeline stage, plus ``sql``.

Configuration comes from ``--conf FILE`` (default ``conf/local.yaml``) and repeatable
``--set key=value`` overrides; both are validated before any Spark session starts. The
``jobs/*.py`` spark-submit entry points call ``main`` with the same arguments.
"""
from __future__ import annotations

import argparse
import datetime as dt
import sys
from typing import Callable, Sequence

from seqlake import constants as C
from seqlake.config import Config, ConfigError, load_config, parse_date
from seqlake.progress import configure_logging, log

ALL_TABLES = (C.EVENTS, C.EVENTS_QUARANTINE, C.INGEST_RUNS, C.SESSIONS, C.SESSION_EVENTS, C.SESSIONIZE_RUNS)

EXIT_USAGE = 2  # bad configuration or arguments: nothing was touched
EXIT_DATA = 3  # the input failed a data check (quarantine threshold, missing day)


def _add_window_args(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--date", help=f"logical date YYYY-MM-DD: {what} that one UTC day")
    parser.add_argument("--from", dest="date_from", help="first day of a range (with --to), YYYY-MM-DD")
    parser.add_argument("--to", dest="date_to", help="last day of a range (with --from), inclusive")
    parser.add_argument("--source", help="source name (conf/sources/<name>.yaml); default: the config's `source`")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seqlake",
        description="User behaviour sequence pipeline on Spark and Delta Lake.",
    )
    parser.add_argument("--conf", default="conf/local.yaml", help="YAML configuration file (default: %(default)s)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one setting, e.g. --set lake.root=/tmp/lake (repeatable)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gen = sub.add_parser(
        "generate",
        help="write synthetic raw logs with a planted purchase signal",
        description=(
            "Write synthetic behaviour logs as JSON lines under "
            "<lake.landing_root>/raw/<source>/dt=YYYY-MM-DD/, one file set per day, for the "
            "generator.* settings (users, days, start_date, seed, dirty_rate ...). Also writes the "
            "true per-user purchase probability for the last generator.label_window_days days to "
            "<lake.landing_root>/truth/<source>/ground_truth.csv and a manifest.json. "
            "Deterministic for a seed. No Spark is started."
        ),
    )
    gen.add_argument("--source", default="generator", help="source name to write under (default: %(default)s)")

    ing = sub.add_parser(
        "ingest",
        help="validate raw logs into the Delta table `events`",
        description=(
            "Read a source's raw files for a logical date (its landing folder dt=DATE) or a range "
            "(--from/--to), or an explicit --input path, and write valid events to `events`, bad "
            "rows with a reason to `events_quarantine`, and an audit row to `ingest_runs`. Events "
            "whose UTC date is outside the run's days are quarantined (ts_before_window / "
            "ts_after_window). Reruns replace the same days. Fails (exit 3) after writing the "
            "quarantine when the quarantined share passes ingest.quarantine_threshold."
        ),
    )
    _add_window_args(ing, "ingest")
    ing.add_argument("--input", help="read this file or folder instead of the landing folders")

    ses = sub.add_parser(
        "sessionize",
        help="cut events into sessions (`sessions`, `session_events`)",
        description=(
            "Assign each event of the day(s) to a session (gap over sessionize.gap_minutes, cut at "
            "sessionize.max_duration_minutes) and upsert `sessions`. A day continues the sessions "
            "still open at the end of the previous day, which must have been sessionized (exit 3 "
            "otherwise). Events over sessionize.user_daily_cap per user and day are quarantined."
        ),
    )
    _add_window_args(ses, "sessionize")
    ses.add_argument("--compare-source-sessions", action="store_true",
                     help="also report agreement with the source's own session ids (e.g. REES46)")

    sql = sub.add_parser(
        "sql",
        help="run a SQL query over the lake's tables",
        description=(
            "Run one SQL statement with the lake's tables registered as <lake.database>.<table> "
            "(e.g. seqlake.events) and print the result."
        ),
    )
    sql.add_argument("statement", help="the SQL statement, e.g. \"SELECT count(*) FROM seqlake.events\"")
    sql.add_argument("--max-rows", type=int, default=50, help="rows to print (default: %(default)s)")
    return parser


def _window(args: argparse.Namespace) -> tuple[dt.date, dt.date]:
    if args.date and (args.date_from or args.date_to):
        raise ConfigError("give either --date or --from/--to, not both")
    if args.date:
        day = parse_date(args.date, "--date")
        return day, day
    if args.date_from and args.date_to:
        start, end = parse_date(args.date_from, "--from"), parse_date(args.date_to, "--to")
        if end < start:
            raise ConfigError(f"--to {end} is before --from {start}")
        return start, end
    raise ConfigError("a date is required: --date YYYY-MM-DD, or --from YYYY-MM-DD --to YYYY-MM-DD")


def _with_spark(cfg: Config, work: Callable) -> int:
    from seqlake import tables
    from seqlake.spark import build_spark

    from pyspark.sql import SparkSession

    # A session the caller already runs (tests, notebooks) is reused and left running.
    owned = SparkSession.getActiveSession() is None
    spark = build_spark(cfg)
    try:
        code = work(spark)
        registered = tables.register(spark, cfg, ALL_TABLES)
        log.info("lake: %s  tables: %s", cfg.lake.root, ", ".join(registered))
        return code
    finally:
        if owned:
            spark.stop()


def cmd_generate(cfg: Config, args: argparse.Namespace) -> int:
    from seqlake.generate import generate

    summary = generate(cfg.generator, cfg.lake.landing_root, source=args.source, progress=log.info)
    print(
        f"generated {summary.events_written:,} events (+{sum(summary.dirty_written.values()):,} dirty, "
        f"+{summary.duplicates_written:,} duplicates) for {summary.users:,} users, "
        f"{summary.first_date}..{summary.last_date}; base rate {summary.base_rate:.3f}, "
        f"oracle AUC {summary.oracle_auc:.3f}\n  raw: {summary.paths['output']}\n"
        f"  truth: {summary.paths['truth']}"
    )
    return 0


def cmd_ingest(cfg: Config, args: argparse.Namespace) -> int:
    from seqlake.ingest import QuarantineThresholdExceeded, ingest
    from seqlake.sources import load_source

    start, end = _window(args)
    spec = load_source(cfg.ingest.sources_dir, args.source or cfg.source)

    def work(spark) -> int:
        try:
            result = ingest(spark, cfg, spec, window_start=start, window_end=end, input_path=args.input)
        except QuarantineThresholdExceeded as exc:
            print(f"seqlake ingest: failed: {exc}", file=sys.stderr)
            return EXIT_DATA
        print(
            f"ingest {result.source} {start}..{end}: read {result.rows_read:,} = written "
            f"{result.rows_written:,} + quarantined {result.rows_quarantined:,} + duplicates "
            f"{result.duplicates_dropped:,}\n  quarantined by reason: {result.quarantined_by_reason or '{}'}\n"
            f"  events: {cfg.table_path(C.EVENTS)}\n  quarantine: {cfg.table_path(C.EVENTS_QUARANTINE)}"
        )
        return 0

    return _with_spark(cfg, work)


def cmd_sessionize(cfg: Config, args: argparse.Namespace) -> int:
    from seqlake import tables
    from seqlake.sessionize import MissingPreviousDay, sessionize, source_session_agreement
    import pyspark.sql.functions as F

    start, end = _window(args)
    source = args.source or cfg.source

    def work(spark) -> int:
        try:
            result = sessionize(spark, cfg, source=source, date_from=start, date_to=end)
        except MissingPreviousDay as exc:
            print(f"seqlake sessionize: failed: {exc}", file=sys.stderr)
            return EXIT_DATA
        print(
            f"sessionize {source} {start}..{end}: {result.events_in:,} events -> "
            f"{result.events_sessionized:,} in sessions + {result.events_capped:,} over the daily cap; "
            f"{result.sessions_touched:,} sessions written\n  sessions: {cfg.table_path(C.SESSIONS)}\n"
            f"  session_events: {cfg.table_path(C.SESSION_EVENTS)}"
        )
        if args.compare_source_sessions:
            events = tables.read(spark, cfg, C.SESSION_EVENTS).filter(
                (F.col(C.SOURCE) == source) & F.col(C.EVENT_DATE).between(F.lit(start), F.lit(end))
            )
            agreement = source_session_agreement(events)
            print("  agreement with source session ids: " + ", ".join(
                f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v:,}" for k, v in agreement.items()
            ))
        return 0

    return _with_spark(cfg, work)


def cmd_sql(cfg: Config, args: argparse.Namespace) -> int:
    def work(spark) -> int:
        from seqlake import tables

        tables.register(spark, cfg, ALL_TABLES)
        spark.sql(f"USE {cfg.lake.database}")
        result = spark.sql(args.statement)
        result.show(args.max_rows, truncate=False)
        return 0

    return _with_spark(cfg, work)


COMMANDS = {"generate": cmd_generate, "ingest": cmd_ingest, "sessionize": cmd_sessionize, "sql": cmd_sql}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    try:
        cfg = load_config(args.conf, args.overrides)
        return COMMANDS[args.command](cfg, args)
    except (ConfigError, FileNotFoundError) as exc:
        print(f"seqlake {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def run_job(command: str, argv: Sequence[str]) -> int:
    """Entry for ``jobs/<command>.py`` under spark-submit: ``--conf``, ``--set`` and ``-v`` may
    stand anywhere among the command's own arguments (``--date`` ...)."""
    global_args: list[str] = []
    command_args: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] in ("--conf", "--set"):
            global_args += argv[i : i + 2]
            i += 2
        else:
            (global_args if argv[i] in ("-v", "--verbose") else command_args).append(argv[i])
            i += 1
    return main([*global_args, command, *command_args])


if __name__ == "__main__":
    sys.exit(main())
