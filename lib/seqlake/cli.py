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

ALL_TABLES = (
    C.EVENTS, C.EVENTS_QUARANTINE, C.INGEST_RUNS, C.SESSIONS, C.SESSION_EVENTS, C.SESSIONIZE_RUNS,
    C.VOCAB, C.VOCAB_VERSIONS, C.USER_SEQUENCES, C.USER_STATE, C.STATE_RUNS, C.RUN_METRICS,
    C.USER_PROPENSITY, C.SCORE_RUNS, C.PROPENSITY_EVALUATION, C.USER_PROFILE,
)

EXIT_USAGE = 2  # bad configuration or arguments: nothing was touched
EXIT_DATA = 3  # the input failed a data check (quarantine threshold, missing day)
EXIT_CONFLICT = 4  # another run committed to the same table partition first (Delta conflict)


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (the usage is one ``--help`` away)."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_window_args(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--date", help=f"logical date YYYY-MM-DD: {what} that one UTC day")
    parser.add_argument("--from", dest="date_from", help="first day of a range (with --to), YYYY-MM-DD")
    parser.add_argument("--to", dest="date_to", help="last day of a range (with --from), inclusive")
    parser.add_argument("--source", help="source name (conf/sources/<name>.yaml); default: the config's `source`")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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
            "quarantine when the quarantined share passes ingest.quarantine_threshold (lines the "
            "source's exclude rules name, such as cancellations, are quarantined but not counted)."
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

    voc = sub.add_parser(
        "vocab",
        help="fit the next vocabulary version (`vocab`, `vocab_versions`)",
        description=(
            "vocab fit: fit the vocabularies of event_type, item_id, category_id and brand on the "
            "sessionized events of a window (--from/--to, or --date D for the vocab.fit_days days "
            "ending with D). Existing tokens keep their index; new tokens seen at least "
            "vocab.<feature>.min_count times are appended, up to vocab.<feature>.max_size, under a "
            "new vocab_version. A fit that adds no token writes no version. Index contract: 0 padding, "
            "1 null, 2..1+K hashed out-of-vocabulary buckets, then the tokens."
        ),
    )
    voc.add_argument("action", choices=["fit"], help="what to do (fit)")
    _add_window_args(voc, "fit on the vocab.fit_days days ending with")

    seq = sub.add_parser(
        "sequences",
        help="write user sequence snapshots (`user_sequences`)",
        description=(
            "Write one snapshot of `user_sequences` per cutoff: per user, the last sequences.length "
            "events before 00:00 UTC of the cutoff as left-padded integer arrays, aggregate features "
            "of the history before it, and the label (purchase in [cutoff, cutoff + "
            "sequences.horizon_days)). Cutoffs: --cutoff D, or --from/--to (every "
            "sequences.cutoff_every_days days), or sequences.cutoffs. Training snapshots need "
            "sessionized data through the label horizon (exit 3 otherwise). --scoring writes an "
            "unlabelled snapshot from `user_state`, which must hold the day before the cutoff."
        ),
    )
    seq.add_argument("--cutoff", "--date", dest="cutoff", help="cutoff date YYYY-MM-DD (one snapshot)")
    seq.add_argument("--from", dest="date_from", help="first cutoff of a range (with --to)")
    seq.add_argument("--to", dest="date_to", help="last possible cutoff of the range, inclusive")
    seq.add_argument("--source", help="source name; default: the config's `source`")
    seq.add_argument("--vocab-version", type=int, help="vocabulary version to encode with (default: the latest)")
    seq.add_argument("--scoring", action="store_true", help="unlabelled snapshot from user_state (nightly scoring)")
    seq.add_argument("--labelled-until", metavar="D",
                     help="the sequences.retrain_cutoffs latest cutoffs (sequences.cutoff_every_days apart) whose "
                          "label horizon ends by D, the last day with data (weekly retraining)")

    sta = sub.add_parser(
        "state",
        help="fold a day into the per-user state (`user_state`)",
        description=(
            "Nightly update of `user_state` (per user: the last sequences.length encoded events and "
            "running aggregates) with the sessionized events of --date only, by Delta MERGE. The "
            "first run bootstraps from all history up to --date, encoding with the latest (or "
            "--vocab-version) vocabulary; nights keep that version. A rerun of a day already held "
            "changes nothing; a day after a gap fails (exit 3). --rebuild recomputes from all history. "
            "Also records the day's null and out-of-vocabulary shares per feature in `run_metrics`."
        ),
    )
    sta.add_argument("--date", required=True, help="the day to fold in, YYYY-MM-DD")
    sta.add_argument("--source", help="source name; default: the config's `source`")
    sta.add_argument("--rebuild", action="store_true", help="recompute the state from all history up to --date")
    sta.add_argument("--vocab-version", type=int,
                     help="vocabulary version to encode with on bootstrap/--rebuild (default: the latest); "
                          "a nightly fold keeps the state's version")

    pro = sub.add_parser(
        "profile",
        help="per-user profiles from the state (`user_profile`)",
        description=(
            "Write one `user_profile` row per user of `user_state` as of --date D (replacing D's rows): "
            "recency, frequency, monetary, sessions in the 7 and 30 days ending with D, events and "
            "minutes per session, top 3 categories and brands by weighted activity "
            "(profile.activity_weights), preferred UTC hour and weekday, days since the first and last "
            "event, a lifecycle segment (new / active / at_risk / lapsed by profile.new_days, "
            "profile.active_days, profile.at_risk_days) and D's propensity and decile from "
            "`user_propensity` (null when D was not scored). Reads the state only, never the event "
            "history; the state must hold exactly D (exit 3 otherwise: run `state --date D`)."
        ),
    )
    pro.add_argument("--date", required=True, help="the profile date, YYYY-MM-DD (the state must hold it)")
    pro.add_argument("--source", help="source name; default: the config's `source`")

    trn = sub.add_parser(
        "train",
        help="train the propensity model, compare with baselines, register it in MLflow",
        description=(
            "Train on the train split of the labelled user_sequences snapshots (training.cutoffs, or "
            "every labelled snapshot of the latest vocab version), stop early on the validation "
            "split's AUC-PR, and evaluate the model, logistic regression, gradient-boosted trees and "
            "a recency heuristic on the test split of the latest snapshot. One MLflow run holds the "
            "config, per-epoch and test metrics, ROC / precision-recall / calibration / lift plots and "
            "the model, registered as mlflow.registered_model; the alias `champion` moves to it only if "
            "it beats the current champion on the same test split by mlflow.promotion_margin. "
            "Petastorm feeds TensorFlow; every read is checked against the table's row count."
        ),
    )
    trn.add_argument("--source", help="source name; default: the config's `source`")
    trn.add_argument("--labelled-until", metavar="D",
                     help="train on the snapshots of `sequences --labelled-until D` (instead of training.cutoffs)")
    trn.add_argument("--no-promote", action="store_true",
                     help="register the version as pending and leave the gate to `seqlake promote` (weekly DAG)")
    trn.add_argument("--workers", type=int,
                     help="TensorFlow workers (default: training.workers); more than 1 runs them as a Spark "
                          "barrier stage with MultiWorkerMirroredStrategy")

    prm = sub.add_parser(
        "promote",
        help="apply the promotion gate to a trained model version",
        description=(
            "Score a registered version (default: the newest) and the current champion on the test split "
            "of the latest training snapshot (the same data `train` selects) and move the alias `champion` "
            "to the version only if its mlflow.promotion_metric beats the champion's by more than "
            "mlflow.promotion_margin; the decision and its reason are recorded as tags of the version "
            "and of its training run. A version already judged keeps its decision (a rerun changes nothing)."
        ),
    )
    prm.add_argument("--source", help="source name; default: the config's `source`")
    prm.add_argument("--labelled-until", metavar="D", help="the test split of `train --labelled-until D`'s latest snapshot")
    prm.add_argument("--version", help="the model version to judge (default: the newest)")

    sco = sub.add_parser(
        "score",
        help="score the day's active users with the champion model (`user_propensity`)",
        description=(
            "Nightly scoring of --date D: loads the model holding the alias `champion` and the vocab "
            "version it was trained with, builds its inputs from `user_state` as of D (which must hold D: "
            "run `state --date D` first), scores every user whose last event is in the "
            "scoring.lookback_days days ending with D in Arrow batches on the executors, and replaces D's "
            "rows of `user_propensity`: propensity of a purchase in the horizon after D, rank and decile "
            "within the day, the model's provenance and up to three reasons in words (occlusion of "
            "(event type, category) groups). Monitoring (score distribution, PSI against the previous "
            "scored day, OOV shares, users with no known event) goes to `score_runs`, `run_metrics` and "
            "an MLflow run in mlflow.scoring_experiment; thresholds scoring.warn_* print warnings. No "
            "champion, a missing vocab version or a state not at D fail (exit 3) and write nothing; so "
            "do fewer than scoring.min_users users."
        ),
    )
    sco.add_argument("--date", required=True, help="the day to score (its last day of data), YYYY-MM-DD")
    sco.add_argument("--source", help="source name; default: the config's `source`")

    eva = sub.add_parser(
        "evaluate",
        help="realised performance of a scored day once its horizon has passed",
        description=(
            "Compare the scores of --date D in `user_propensity` with what the users did in the horizon "
            "after D (a purchase in [D+1, D+horizon_days]): realised AUC-ROC, AUC-PR, log loss, Brier "
            "score, and per decile the mean propensity, purchase rate and lift, written to "
            "`propensity_evaluation` (replacing D's rows) and logged with calibration and lift plots to "
            "mlflow.scoring_experiment. Fails (exit 3) while D + horizon_days is not sessionized yet."
        ),
    )
    which = eva.add_mutually_exclusive_group(required=True)
    which.add_argument("--date", help="the scored day to evaluate, YYYY-MM-DD")
    which.add_argument("--completed-by", metavar="D",
                       help="the night D: evaluate the scores of D - sequences.horizon_days, whose horizon D "
                            "completes, and succeed with nothing to do when that day was not scored (how "
                            "`nightly` and the nightly DAG run it)")
    eva.add_argument("--source", help="source name; default: the config's `source`")

    rep = sub.add_parser(
        "report",
        help="one self-contained HTML page of a night: calibration, scores, drift, volumes, champion",
        description=(
            "Write one HTML page (inline SVG charts, no script, no other file) about the scores of "
            "--date D and the nights before it: predicted against realised by decile and as calibration "
            "(the latest evaluated day up to D), the distribution of D's scores, PSI and OOV shares of the "
            "scoring runs, sessions and quarantined records per day, and the champion against the "
            "baselines on its test split. Default location: <lake.root>/_reports/<source>/report-D.html. "
            "Fails (exit 3) when D was not scored."
        ),
    )
    rep.add_argument("--date", required=True, help="the scored night to report on, YYYY-MM-DD")
    rep.add_argument("--source", help="source name; default: the config's `source`")
    rep.add_argument("--nights", type=int, default=14, help="nights of history in the charts (default: %(default)s)")
    rep.add_argument("--out", help="where to write the page (a path or URI); default: under the lake, as above")

    nig = sub.add_parser(
        "nightly",
        help="one night in one Spark application: ingest, sessionize, state, score, profile, evaluate, check",
        description=(
            "Run the nightly stages of --date D (or of each day of --from/--to in order) in one Spark "
            "application: ingest D, sessionize D, state D, score D, profile D, evaluate the scores of "
            "D - sequences.horizon_days (skipped while there are none), check D. Each stage does exactly "
            "what its own command does, with the same tables and results, without a JVM start of its own. "
            "Stops at the first stage that fails, with that stage's exit code (3: the data failed a "
            "check; rerun from that stage once mended). The Airflow DAG keeps one task per stage."
        ),
    )
    _add_window_args(nig, "run the night of")

    chk = sub.add_parser(
        "check",
        help="check that a night's stages ran, balanced and wrote their rows",
        description=(
            "Checks of --date D, from the run-audit tables and D's partitions: the latest ingest run "
            "covering D succeeded, balanced (read = written + quarantined + duplicates) and stayed within "
            "ingest.quarantine_threshold, and `events` holds what it wrote; sessionize balanced and read "
            "every event of D; `user_state` holds exactly D; `user_propensity` holds D's scores, as many as "
            "D's scoring run reported; `user_profile` holds D's rows. Prints one line per check; exit 3 if "
            "any failed."
        ),
    )
    chk.add_argument("--date", required=True, help="the day to check, YYYY-MM-DD")
    chk.add_argument("--source", help="source name; default: the config's `source`")
    chk.add_argument("--only", help="comma-separated subset of ingest,sessionize,state,score,profile")

    hk = sub.add_parser(
        "housekeeping",
        help="compact (OPTIMIZE, Z-order by user_id) and VACUUM the lake's Delta tables",
        description=(
            "For each table of housekeeping.tables that exists: OPTIMIZE it (only the partitions of the "
            "housekeeping.recent_days days ending with --date for date-partitioned tables; Z-ordered by "
            "user_id for housekeeping.zorder_tables), then VACUUM files that versions younger than "
            "housekeeping.vacuum_retention_hours no longer need, and the _staging folders of killed ingest "
            "runs older than that. Prints files compacted and deleted per table. Trade-offs: docs/operations.md, \"Lake housekeeping\"."
        ),
    )
    hk.add_argument("--date", help="last day of the recent partitions to optimize, YYYY-MM-DD (default: today, UTC)")
    hk.add_argument("--tables", help="comma-separated subset of housekeeping.tables (default: all of them)")
    hk.add_argument("--no-optimize", action="store_true", help="skip OPTIMIZE")
    hk.add_argument("--no-vacuum", action="store_true", help="skip VACUUM")

    lnd = sub.add_parser(
        "landed",
        help="has a day's raw data arrived? (exit 0 yes, 3 not yet)",
        description=(
            "Whether <lake.landing_root>/raw/<source>/dt=D/ holds data files (and ingest.landing_marker, "
            "when set). No Spark: reads the folder listing with pyarrow (local, s3a://, hdfs://). The "
            "nightly DAG's sensor calls it. Exit 0 landed, 3 not yet."
        ),
    )
    lnd.add_argument("--date", required=True, help="the day, YYYY-MM-DD")
    lnd.add_argument("--source", help="source name; default: the config's `source`")

    sql = sub.add_parser(
        "sql",
        help="run a SQL query over the lake's tables",
        description=(
            "Run one SQL statement with the lake's tables registered as <lake.database>.<table> "
            "(e.g. seqlake.events) and print the result. Read-only: unless --allow-writes is given, "
            "a statement that Spark parses as anything but a query, SHOW, DESCRIBE or EXPLAIN (INSERT, "
            "DELETE, UPDATE, MERGE, DROP, ALTER, CREATE, OPTIMIZE, VACUUM, RESTORE, SET, CACHE ...) or "
            "that calls reflect() is refused before it runs."
        ),
    )
    sql.add_argument("statement", help="the SQL statement, e.g. \"SELECT count(*) FROM seqlake.events\"")
    sql.add_argument("--max-rows", type=int, default=50,
                     help="rows to print as a table (default: %(default)s); csv and json print every row")
    sql.add_argument("--format", choices=("table", "csv", "json"), default="table",
                     help="table (readable, default), csv (header line, then rows) or json (one object per line)")
    sql.add_argument("--allow-writes", action="store_true",
                     help="run a statement that changes tables (repairs by hand; the pipeline never needs it)")
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


_DEPTH = 0  # commands running in this process, one inside the other (`nightly` runs stages)


def _with_spark(cfg: Config, work: Callable) -> int:
    from seqlake import tables
    from seqlake.spark import build_spark

    from pyspark.sql import SparkSession

    global _DEPTH
    # A session the caller already runs (tests, notebooks) is reused and left running.
    owned = SparkSession.getActiveSession() is None
    spark = build_spark(cfg)
    _DEPTH += 1
    try:
        code = work(spark)
        if _DEPTH > 1:  # a stage of `nightly`: the tables are registered once, at its end
            return code
        if owned and cfg.lake.catalog != "hive":
            # An in-memory catalog ends with this process: registering would only read the log of
            # every table (about a minute of a short job on a busy machine) for nobody to see.
            log.info("lake: %s", cfg.lake.root)
            return code
        # Column comments are Delta commits: jobs add them only to a persistent catalog's new
        # entries (once per table), not to every process's in-memory catalog; `sql` always does.
        registered = tables.register(spark, cfg, ALL_TABLES, comments=cfg.lake.catalog == "hive")
        log.info("lake: %s  tables: %s", cfg.lake.root, ", ".join(registered))
        return code
    finally:
        _DEPTH -= 1
        if owned:
            spark.stop()


def cmd_generate(cfg: Config, args: argparse.Namespace) -> int:
    import dataclasses
    from pathlib import Path

    from seqlake import storage
    from seqlake.config import join_path
    from seqlake.generate import generate

    if storage.is_local(cfg.lake.landing_root):
        summary = generate(cfg.generator, cfg.lake.landing_root, source=args.source, progress=log.info)
    else:  # an object store: write locally, then upload the same tree (the generator writes local files)
        import tempfile

        with tempfile.TemporaryDirectory(prefix="seqlake-generate-") as scratch:
            summary = generate(cfg.generator, scratch, source=args.source, progress=log.info)
            copied = storage.publish_tree(scratch, cfg.lake.landing_root, storage.hadoop_conf(cfg))
            log.info("generate: uploaded %d files to %s", copied, cfg.lake.landing_root)
        summary = dataclasses.replace(summary, paths={
            key: join_path(cfg.lake.landing_root, str(Path(path).relative_to(scratch)))
            for key, path in summary.paths.items()})
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


def cmd_vocab(cfg: Config, args: argparse.Namespace) -> int:
    from seqlake import vocab

    if args.date and not (args.date_from or args.date_to):
        end = parse_date(args.date, "--date")
        start = end - dt.timedelta(days=cfg.vocab.fit_days - 1)
    else:
        start, end = _window(args)
    source = args.source or cfg.source

    def work(spark) -> int:
        try:
            result = vocab.fit(spark, cfg, source=source, fit_from=start, fit_to=end)
        except vocab.VocabMissing as exc:
            print(f"seqlake vocab: failed: {exc}", file=sys.stderr)
            return EXIT_DATA
        state = "new version" if result.created else "unchanged, current version"
        print(
            f"vocab fit {source} {start}..{end}: {state} {result.vocab_version}\n"
            + "\n".join(f"  {f}: {result.tokens[f]:,} tokens (+{result.new_tokens[f]:,} new)" for f in result.tokens)
            + f"\n  vocab: {cfg.table_path(C.VOCAB)}"
        )
        return 0

    return _with_spark(cfg, work)


def _labelled_cutoffs(cfg: Config, until: str) -> list[dt.date]:
    from seqlake.sequences import labelled_cutoffs

    return labelled_cutoffs(parse_date(until, "--labelled-until"), cfg.sequences.horizon_days,
                            cfg.sequences.cutoff_every_days, cfg.sequences.retrain_cutoffs)


def _with_training_cutoffs(cfg: Config, until: str | None) -> Config:
    """``cfg`` whose training.cutoffs are those of ``--labelled-until`` (unchanged without it)."""
    import dataclasses

    if not until:
        return cfg
    cutoffs = tuple(d.isoformat() for d in _labelled_cutoffs(cfg, until))
    return dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, cutoffs=cutoffs))


def _cutoffs(cfg: Config, args: argparse.Namespace) -> list[dt.date]:
    from seqlake.sequences import cutoffs_between

    if sum(map(bool, (args.cutoff, args.date_from or args.date_to, args.labelled_until))) > 1:
        raise ConfigError("give one of --cutoff, --from/--to or --labelled-until")
    if args.labelled_until:
        return _labelled_cutoffs(cfg, args.labelled_until)
    if args.cutoff:
        return [parse_date(args.cutoff, "--cutoff")]
    if args.date_from or args.date_to:
        if not (args.date_from and args.date_to):
            raise ConfigError("--from and --to go together")
        start, end = parse_date(args.date_from, "--from"), parse_date(args.date_to, "--to")
        if end < start:
            raise ConfigError(f"--to {end} is before --from {start}")
        return cutoffs_between(start, end, cfg.sequences.cutoff_every_days)
    if cfg.sequences.cutoffs:
        return sorted(parse_date(d, "sequences.cutoffs") for d in cfg.sequences.cutoffs)
    raise ConfigError("a cutoff is required: --cutoff YYYY-MM-DD, --from/--to, or sequences.cutoffs in the config")


def cmd_sequences(cfg: Config, args: argparse.Namespace) -> int:
    from seqlake import sequences, state, vocab

    cutoffs = _cutoffs(cfg, args)
    source = args.source or cfg.source

    def work(spark) -> int:
        try:
            vocabulary = vocab.load(spark, cfg, source, args.vocab_version)
            for cutoff in cutoffs:
                r = sequences.build_snapshot(spark, cfg, source=source, cutoff=cutoff, vocabulary=vocabulary,
                                             scoring=args.scoring)
                label = "unlabelled" if r.positives is None else f"{r.positives:,} positive ({r.positives / max(r.users, 1):.1%})"
                print(
                    f"sequences {source} cutoff {cutoff}: {r.users:,} users, {label}, split {r.by_split}, "
                    f"vocab_version {r.vocab_version}; OOV share "
                    + ", ".join(f"{f}={v:.2%}" for f, v in r.oov_share.items())
                )
        except (vocab.VocabMissing, sequences.LabelHorizonNotCovered, state.StateGap) as exc:
            print(f"seqlake sequences: failed: {exc}", file=sys.stderr)
            return EXIT_DATA
        print(f"  user_sequences: {cfg.table_path(C.USER_SEQUENCES)}")
        return 0

    return _with_spark(cfg, work)


def cmd_state(cfg: Config, args: argparse.Namespace) -> int:
    from seqlake import state, vocab

    day = parse_date(args.date, "--date")
    source = args.source or cfg.source

    def work(spark) -> int:
        try:
            r = state.update_state(spark, cfg, source=source, day=day, rebuild=args.rebuild,
                                   vocab_version=args.vocab_version)
        except (state.StateGap, vocab.VocabMissing) as exc:
            print(f"seqlake state: failed: {exc}", file=sys.stderr)
            return EXIT_DATA
        print(
            f"state {source} {day}: {r.mode} (vocab_version {r.vocab_version}); {r.events_in:,} events in, "
            f"{r.users_updated:,} users updated, "
            f"{r.users_total:,} users in the state (holds events up to {r.state_date})\n"
            f"  user_state: {cfg.table_path(C.USER_STATE)}"
        )
        return 0

    return _with_spark(cfg, work)


def cmd_profile(cfg: Config, args: argparse.Namespace) -> int:
    from seqlake import profiles, state

    day = parse_date(args.date, "--date")
    source = args.source or cfg.source

    def work(spark) -> int:
        try:
            r = profiles.build_profiles(spark, cfg, source=source, day=day)
        except state.StateGap as exc:
            print(f"seqlake profile: failed: {exc}", file=sys.stderr)
            return EXIT_DATA
        print(
            f"profile {source} {day}: {r.users:,} users ("
            + ", ".join(f"{name} {n:,}" for name, n in r.by_segment.items())
            + f"), {r.scored:,} with a propensity; user_profile: {r.path}"
        )
        return 0

    return _with_spark(cfg, work)


def cmd_train(cfg: Config, args: argparse.Namespace) -> int:
    from seqlake import dataset, train

    source = args.source or cfg.source
    if args.workers is not None and args.workers < 1:
        raise ConfigError("--workers: expected an integer >= 1")
    workers = args.workers or cfg.training.workers
    if cfg.training.batch_size % workers:
        raise ConfigError(f"--workers {workers}: training.batch_size {cfg.training.batch_size} must be a multiple of it")

    cfg = _with_training_cutoffs(cfg, args.labelled_until)

    def work(spark) -> int:
        try:
            r = train.train(spark, cfg, source=source, workers=workers, promote_now=not args.no_promote)
        except (dataset.NoTrainingData, dataset.RowCountMismatch) as exc:
            print(f"seqlake train: failed: {exc}", file=sys.stderr)
            return EXIT_DATA
        print(f"train {source}: {cfg.model.type}, vocab_version {r.data.vocab_version}, "
              f"{r.data.train.rows:,} training rows, best epoch {r.best_epoch} of {r.epochs_run}; "
              f"test split at {r.data.eval_cutoff} ({r.data.test.rows:,} users):")
        for name, m in r.test_metrics.items():
            print(f"  {name:<20} " + "  ".join(f"{k} {v:.4f}" for k, v in m.items()))
        print(f"  model version {r.model_version} of {cfg.mlflow.registered_model}: "
              f"{'PROMOTED to champion' if r.promoted else 'not promoted'} ({r.reason})\n"
              f"  MLflow run {r.run_id} in {cfg.mlflow_tracking_uri()} (experiment {cfg.mlflow.experiment}); "
              f"artifacts under {cfg.mlflow_artifact_root()}")
        return 0

    return _with_spark(cfg, work)


def cmd_promote(cfg: Config, args: argparse.Namespace) -> int:
    from seqlake import dataset, train

    source = args.source or cfg.source
    cfg = _with_training_cutoffs(cfg, args.labelled_until)

    def work(spark) -> int:
        try:
            r = train.judge(spark, cfg, source=source, version=args.version)
        except (dataset.NoTrainingData, dataset.RowCountMismatch) as exc:
            print(f"seqlake promote: failed: {exc}", file=sys.stderr)
            return EXIT_DATA
        state = "PROMOTED to champion" if r.promoted else "not promoted"
        print(f"promote {cfg.mlflow.registered_model} version {r.model_version}: {state} ({r.reason})"
              + (" [judged before; unchanged]" if r.already_judged else ""))
        return 0

    return _with_spark(cfg, work)


def cmd_check(cfg: Config, args: argparse.Namespace) -> int:
    from seqlake import checks

    day = parse_date(args.date, "--date")
    source = args.source or cfg.source
    only = tuple(x.strip() for x in args.only.split(",")) if args.only else tuple(checks.CHECKS)
    unknown = set(only) - set(checks.CHECKS)
    if unknown:
        raise ConfigError(f"--only {args.only}: unknown {sorted(unknown)}; expected some of {','.join(checks.CHECKS)}")

    def work(spark) -> int:
        results = checks.night(spark, cfg, source=source, day=day, only=only)
        for c in results:
            print(f"  {'ok  ' if c.ok else 'FAIL'} {c.name:<11} {c.detail}")
        failed = [c.name for c in results if not c.ok]
        print(f"check {source} {day}: " + (f"FAILED {', '.join(failed)}" if failed else f"all {len(results)} passed"))
        return EXIT_DATA if failed else 0

    return _with_spark(cfg, work)


def cmd_housekeeping(cfg: Config, args: argparse.Namespace) -> int:
    from seqlake import housekeeping

    day = parse_date(args.date, "--date") if args.date else None
    names = tuple(x.strip() for x in args.tables.split(",")) if args.tables else cfg.housekeeping.tables
    housekeeping.validate_tables(names, cfg.housekeeping.tables)
    if args.no_optimize and args.no_vacuum:
        raise ConfigError("--no-optimize and --no-vacuum together leave nothing to do")

    def work(spark) -> int:
        results = housekeeping.housekeep(spark, cfg, table_names=names, optimize=not args.no_optimize,
                                         vacuum=not args.no_vacuum, day=day)
        for r in results:
            scope = "" if r.optimized_where is None else (f" where {r.optimized_where}" if r.optimized_where else " (all)")
            print(f"  {r.table:<18} optimize{scope}{' zorder(user_id)' if r.zordered else ''}: "
                  f"{r.files_removed} files -> {r.files_added}; vacuum deleted "
                  f"{'-' if r.files_vacuumed is None else r.files_vacuumed}; now {r.files_after} files, "
                  f"version {r.version_after}")
        if not args.no_vacuum:
            stale = housekeeping.remove_stale_staging(spark, cfg)
            print(f"  _staging: {len(stale)} folders of killed ingest runs removed")
        print(f"housekeeping: {len(results)} tables under {cfg.lake.root}")
        return 0

    return _with_spark(cfg, work)


def cmd_landed(cfg: Config, args: argparse.Namespace) -> int:
    from seqlake import checks

    day = parse_date(args.date, "--date")
    ready, detail = checks.landed(cfg, args.source or cfg.source, day)
    print(f"landed {day}: {'yes' if ready else 'not yet'}: {detail}")
    return 0 if ready else EXIT_DATA


def cmd_score(cfg: Config, args: argparse.Namespace) -> int:
    from seqlake import scoring

    day = parse_date(args.date, "--date")
    source = args.source or cfg.source

    def work(spark) -> int:
        try:
            r = scoring.score(spark, cfg, source=source, day=day)
        except (scoring.ScoringRefused, scoring.BrokenScoringInput) as exc:
            print(f"seqlake score: failed: {exc}", file=sys.stderr)
            return EXIT_DATA
        psi = "n/a (no earlier scored day)" if r.psi is None else f"{r.psi:.4f}"
        print(
            f"score {source} {day}: {r.users_scored:,} users with {r.champion.name} version {r.champion.version} "
            f"(vocab_version {r.champion.vocab_version}) in {r.elapsed_seconds:.0f}s; mean propensity {r.mean:.4f}, "
            f"median {r.quantiles['p50']:.4f}, p90 {r.quantiles['p90']:.4f}; PSI {psi}; "
            f"users with no known event {r.empty_share:.2%}\n"
            + "".join(f"  WARNING: {w}\n" for w in r.warnings)
            + f"  user_propensity: {cfg.table_path(C.USER_PROPENSITY)}\n"
            f"  MLflow run {r.mlflow_run_id} (experiment {cfg.mlflow.scoring_experiment})"
        )
        return 0

    return _with_spark(cfg, work)


def scored_day_completed_by(spark, cfg: Config, source: str, night: dt.date) -> dt.date | None:
    """The scored day whose horizon ``night`` completes (night - sequences.horizon_days), or None
    when that day has no scores."""
    from seqlake import tables

    day = night - dt.timedelta(days=cfg.sequences.horizon_days)
    scored = tables.has_rows(spark, cfg, C.USER_PROPENSITY, f"source = '{source}' AND score_date = '{day}'")
    return day if scored else None


def cmd_report(cfg: Config, args: argparse.Namespace) -> int:
    from seqlake import report

    day = parse_date(args.date, "--date")
    source = args.source or cfg.source
    if args.nights < 1:
        raise ConfigError(f"--nights: expected a number of nights >= 1, got {args.nights}")

    def work(spark) -> int:
        try:
            r = report.build(spark, cfg, source=source, day=day, nights=args.nights, out=args.out)
        except report.ReportRefused as exc:
            print(f"seqlake report: failed: {exc}", file=sys.stderr)
            return EXIT_DATA
        print(f"report {source} {day}: {r.sections} sections, {r.charts} charts\n  {r.path}")
        return 0

    return _with_spark(cfg, work)


def cmd_evaluate(cfg: Config, args: argparse.Namespace) -> int:
    from seqlake import outcomes

    night = parse_date(args.completed_by, "--completed-by") if args.completed_by else None
    source = args.source or cfg.source

    def work(spark) -> int:
        day = parse_date(args.date, "--date") if night is None else scored_day_completed_by(spark, cfg, source, night)
        if day is None:
            print(f"evaluate {source}: no scores of {night - dt.timedelta(days=cfg.sequences.horizon_days)} "
                  f"(the day whose horizon {night} completes); nothing to evaluate")
            return 0
        try:
            r = outcomes.evaluate(spark, cfg, source=source, day=day)
        except outcomes.NothingToEvaluate as exc:
            print(f"seqlake evaluate: failed: {exc}", file=sys.stderr)
            return EXIT_DATA

        def fmt(v):
            return "n/a" if v is None else f"{v:.4f}"

        print(f"evaluate {source} {day}: {r.users:,} users scored, {r.buyers:,} bought within the horizon; "
              f"realised AUC-ROC {fmt(r.auc_roc)}, AUC-PR {fmt(r.auc_pr)}, log loss {r.log_loss:.4f}, "
              f"Brier {r.brier:.4f}, top-decile lift {fmt(r.lift_top_decile)}\n"
              f"  propensity_evaluation: {cfg.table_path(C.PROPENSITY_EVALUATION)}\n"
              f"  MLflow run {r.mlflow_run_id} (experiment {cfg.mlflow.scoring_experiment})")
        return 0

    return _with_spark(cfg, work)


# The stages of one night, in order, as subcommands run on one Spark session.
NIGHT = ("ingest", "sessionize", "state", "score", "profile", "evaluate", "check")


def cmd_nightly(cfg: Config, args: argparse.Namespace) -> int:
    start, end = _window(args)
    source = args.source or cfg.source
    parser = build_parser()

    def work(spark) -> int:
        for offset in range((end - start).days + 1):
            day = start + dt.timedelta(days=offset)
            for name in NIGHT:
                # evaluate: the scores whose horizon this night completes, as the DAG's task runs it
                flag = "--completed-by" if name == "evaluate" else "--date"
                log.info("[nightly %s] %s %s %s", day, name, flag, day)
                code = COMMANDS[name](cfg, parser.parse_args([name, flag, str(day), "--source", source]))
                if code:
                    print(f"seqlake nightly: stopped at `{name} {flag} {day}` (exit {code}); the stages "
                          f"before it are written", file=sys.stderr)
                    return code
        print(f"nightly {source} {start}..{end}: {', '.join(NIGHT)} done")
        return 0

    return _with_spark(cfg, work)


def print_result(result, fmt: str, max_rows: int) -> None:
    """Print a query result: a readable table (first ``max_rows``), or every row as csv / json
    lines, streamed partition by partition (never the whole result on the driver at once)."""
    import csv
    import json

    if fmt == "table":
        result.show(max_rows, truncate=False)
        return
    columns = result.columns
    if fmt == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        for row in result.toLocalIterator():
            writer.writerow(["" if v is None else v for v in row])
        return
    for row in result.toLocalIterator():
        print(json.dumps(row.asDict(recursive=True), default=str, ensure_ascii=False))


def cmd_sql(cfg: Config, args: argparse.Namespace) -> int:
    from seqlake.sqlguard import write_problem

    def work(spark) -> int:
        from seqlake import tables

        problem = None if args.allow_writes else write_problem(spark, args.statement)
        if problem:
            raise ConfigError(f"refused: {problem}; `seqlake sql` only reads unless --allow-writes is given")
        tables.register(spark, cfg, ALL_TABLES)
        spark.sql(f"USE {cfg.lake.database}")
        result = spark.sql(args.statement)
        print_result(result, args.format, args.max_rows)
        return 0

    return _with_spark(cfg, work)


COMMANDS = {
    "generate": cmd_generate, "ingest": cmd_ingest, "sessionize": cmd_sessionize, "vocab": cmd_vocab,
    "sequences": cmd_sequences, "state": cmd_state, "profile": cmd_profile, "train": cmd_train, "score": cmd_score,
    "evaluate": cmd_evaluate, "promote": cmd_promote, "check": cmd_check, "landed": cmd_landed, "sql": cmd_sql,
    "housekeeping": cmd_housekeeping, "nightly": cmd_nightly, "report": cmd_report,
}


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
    except Exception as exc:
        from seqlake.tables import ContractViolation, delta_conflict

        if isinstance(exc, ContractViolation):  # the rows, not the run, are wrong: a retry cannot help
            print(f"seqlake {args.command}: failed: {exc}", file=sys.stderr)
            return EXIT_DATA
        conflict = delta_conflict(exc)
        if conflict is None:
            raise
        # Delta refused this run's commit: another run changed the same partitions first. The
        # refused table keeps the other run's rows; nothing of this run was committed to it.
        print(f"seqlake {args.command}: conflict: another run committed to the same table at the same "
              f"time, so this run stopped without committing there ({conflict}); run it again once "
              f"the other has finished", file=sys.stderr)
        return EXIT_CONFLICT


def run_job(command: str, argv: Sequence[str]) -> int:
    """Entry for ``jobs/<command>.py`` under spark-submit: ``--conf``, ``--set`` and ``-v`` may
    stand anywhere among the command's own arguments (``--date`` ...). Relative paths in the
    config resolve against ``SEQLAKE_WORKDIR`` when it is set (Airflow tasks set it to the
    project folder; spark-submit itself runs wherever its caller does)."""
    import os

    workdir = os.environ.get("SEQLAKE_WORKDIR")
    if workdir:
        os.chdir(workdir)
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
