"""The benchmark suite: every stage, side by side, at several sizes, in one run.

    .venv/bin/python bench/run.py                       # 2M and 10M events, peer and skew at 10M
    .venv/bin/python bench/run.py --sizes 2000000,10000000,25000000,50000000   # the scaling curve

For each size (generated events, reused from ``--work`` when present) every stage runs in a
fresh Python and JVM on ``local[2]``, in pipeline order on one lake:

  lower_bound      read the raw JSON, repartition by user, sort by user and time, write Parquet
  ingest           raw -> events (+ quarantine), all days in one run
  sessionize       events -> session_events, sessions
  vocab            vocabulary fit on the first three weeks
  sequences        one training snapshot: all history before the cutoff, label window after it
  state_bootstrap  user_state from all history up to the day before the last
  state_nightly    the nightly fold of the last day (MERGE)
  train            (prerequisite of score, untimed: 1 epoch, small GBT; not a benchmark)
  score            the nightly scoring of every user with reasons, monitoring, MLflow

Each stage reports wall time, throughput, the peak resident memory of the JVM (in local mode
the driver and executor are one process) and of the Python driver, the executor's peak JVM heap
use (Spark's executor metrics), and Spark's spill and shuffle totals (from the event log).

At ``--peer-size`` a single-node peer, DuckDB with 2 threads, runs the same sessionization and
last-N sequence building as SQL over the same Parquet files (the events table's current files);
ours is sessionize + sequences. The same SQL then runs on Spark (``local[2]``, a fresh JVM, the same
files in and Parquet out): DuckDB's work with nothing of ours, so its ratio to DuckDB is a floor
under ours / DuckDB (for that SQL; a hand-tuned Spark job could differ). At ``--skew-size`` the same pipeline runs again on the same
input plus one user with ``--skew-events`` events (beyond ``sessionize.user_daily_cap`` per day
they are quarantined as a bot by design), and each stage's time is compared with the run
without that user. ``--with-component-benches`` also runs bench_training.py and
bench_scoring.py (the issue 4 and 5 ratios).

Targets (issues 2, 3, 7): (ingest + sessionize) / lower bound <= 2.0; sequences / lower bound
<= 2.0; state_nightly / sequences < 0.20; t(50M) / t(10M) <= 5.5 for the pipeline; JVM peak
within 20% across sizes; ours / DuckDB <= 3.0 at 10M; skewed / plain <= 1.5 per stage.

Results: bench/results/suite-<time>.json (every figure) and .md (the tables), not committed.
"""
from __future__ import annotations

import argparse
import datetime as dt
import glob
import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_ingest_sessionize import REPO, bench_settings, generate_once, jvm_peak_rss_mb, save_results  # noqa: E402
from bench_ingest_sessionize import child as run_child  # noqa: E402  (--job STAGE of this script)

SOURCE = "generator"
PIPELINE = ["lower_bound", "ingest", "sessionize", "vocab", "sequences", "state_bootstrap", "state_nightly",
            "train", "score"]
TIMED = [s for s in PIPELINE if s not in ("lower_bound", "train")]
# Stages whose throughput is counted in events read; the others in users.
USER_STAGES = {"score"}


# --------------------------------------------------------------------------- child side


def child_settings(work: Path, driver_memory: str, event_log: Path) -> list[str]:
    return [
        *bench_settings(work, driver_memory),
        f"mlflow.tracking_uri=sqlite:///{work / 'lake' / '_mlflow' / 'mlflow.db'}",
        "spark.conf.spark.eventLog.enabled=true",
        f"spark.conf.spark.eventLog.dir=file://{event_log}",
        "spark.conf.spark.eventLog.compress=false",
        "spark.conf.spark.eventLog.rolling.enabled=false",
        "spark.conf.spark.eventLog.logStageExecutorMetrics=true",
        # Prerequisite training only (untimed): enough to register a champion scoring can load.
        "training.epochs=1",
        "training.gbt_max_iter=5",
    ]


def event_log_metrics(path: Path) -> dict:
    """Spill, shuffle and peak executor heap from one application's event log."""
    totals = {"memory_spilled_mb": 0.0, "disk_spilled_mb": 0.0, "shuffle_written_mb": 0.0, "jobs": 0, "stages": 0}
    heap_peak = 0
    names = {"internal.metrics.memoryBytesSpilled": "memory_spilled_mb",
             "internal.metrics.diskBytesSpilled": "disk_spilled_mb",
             "internal.metrics.shuffle.write.bytesWritten": "shuffle_written_mb"}
    with open(path) as handle:
        for line in handle:
            event = json.loads(line)
            kind = event["Event"]
            if kind == "SparkListenerJobStart":
                totals["jobs"] += 1
            elif kind == "SparkListenerStageCompleted":
                totals["stages"] += 1
                for acc in event["Stage Info"].get("Accumulables", []):
                    if acc.get("Name") in names:
                        totals[names[acc["Name"]]] += float(acc.get("Value") or 0) / 1e6
            elif kind == "SparkListenerStageExecutorMetrics":
                heap_peak = max(heap_peak, int(event.get("Executor Metrics", {}).get("JVMHeapMemory", 0)))
    totals["executor_heap_peak_mb"] = heap_peak / 2**20
    return {k: round(v, 1) if isinstance(v, float) else v for k, v in totals.items()}


def run_stage(stage: str, work: Path, first: dt.date, last: dt.date, driver_memory: str) -> dict:
    """Run one stage in this (child) process; return its measurements."""
    from seqlake.config import load_config
    from seqlake.spark import build_spark

    if stage == "lower_bound":
        from bench_ingest_sessionize import run_job

        # Its own session (no event log needed: it is the yardstick, not the subject).
        return run_job("lower_bound", work, str(first), str(last), driver_memory)
    event_log = work / "eventlog"
    event_log.mkdir(parents=True, exist_ok=True)
    cfg = load_config(REPO / "conf" / "local.yaml", child_settings(work, driver_memory, event_log))
    cutoff = last - dt.timedelta(days=cfg.sequences.horizon_days - 1)
    if stage == "duckdb":
        return run_duckdb(work, cutoff, cfg)
    spark = build_spark(cfg)
    if stage == "spark_sql_peer":
        info = run_spark_sql_peer(spark, work, cutoff, cfg)
        info["jvm_peak_rss_mb"] = jvm_peak_rss_mb(spark)
        spark.stop()
        return info
    app_id = spark.sparkContext.applicationId
    info: dict = {}
    start = time.monotonic()
    if stage == "ingest":
        from seqlake.ingest import ingest
        from seqlake.sources import load_source

        r = ingest(spark, cfg, load_source(cfg.ingest.sources_dir, SOURCE), window_start=first, window_end=last)
        info.update(units=r.rows_read, written=r.rows_written, quarantined=r.rows_quarantined, balanced=r.balanced)
    elif stage == "sessionize":
        from seqlake.sessionize import sessionize

        r = sessionize(spark, cfg, source=SOURCE, date_from=first, date_to=last)
        info.update(units=r.events_in, capped=r.events_capped, sessions=r.sessions_touched, balanced=r.balanced)
    elif stage == "vocab":
        from seqlake.vocab import fit

        r = fit(spark, cfg, source=SOURCE, fit_from=first, fit_to=first + dt.timedelta(days=20))
        info.update(units=events_between(spark, cfg, first, first + dt.timedelta(days=20)), tokens=r.tokens)
    elif stage == "sequences":
        from seqlake import vocab
        from seqlake.sequences import build_snapshot

        r = build_snapshot(spark, cfg, source=SOURCE, cutoff=cutoff, vocabulary=vocab.load(spark, cfg, SOURCE))
        info.update(units=events_between(spark, cfg, first, cutoff - dt.timedelta(days=1)), users=r.users,
                    cutoff=str(cutoff))
    elif stage in ("state_bootstrap", "state_nightly"):
        from seqlake.state import update_state

        day = last if stage == "state_nightly" else last - dt.timedelta(days=1)
        r = update_state(spark, cfg, source=SOURCE, day=day, rebuild=stage == "state_bootstrap")
        info.update(units=r.events_in, users_updated=r.users_updated, users=r.users_total, mode=r.mode)
    elif stage == "train":
        from seqlake import train

        r = train.train(spark, cfg, source=SOURCE, workers=1, promote_now=True)
        info.update(units=r.data.train.rows, promoted=r.promoted)
    elif stage == "score":
        from seqlake import scoring

        r = scoring.score(spark, cfg, source=SOURCE, day=last)
        info.update(units=r.users_scored, psi=r.psi)
    else:
        raise SystemExit(f"unknown stage {stage}")
    info["seconds"] = time.monotonic() - start
    info["jvm_peak_rss_mb"] = jvm_peak_rss_mb(spark)
    spark.stop()
    info["python_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    logs = glob.glob(str(event_log / app_id))
    if logs:
        info.update(event_log_metrics(Path(logs[0])))
    return info


def events_between(spark, cfg, first: dt.date, last: dt.date) -> int:
    """Events of the days [first, last] (Delta answers the count from file statistics)."""
    import pyspark.sql.functions as F

    from seqlake import tables

    return (tables.read(spark, cfg, "session_events")
            .filter((F.col("source") == SOURCE) & F.col("event_date").between(F.lit(first), F.lit(last))).count())


def delta_files(table: Path) -> list[str]:
    """The current data files of a Delta table written without checkpoints (a fresh bench lake)."""
    log = table / "_delta_log"
    if list(log.glob("*.checkpoint*.parquet")):
        raise SystemExit(f"{table} has a checkpoint: the peer reads fresh bench lakes only")
    live: dict[str, None] = {}
    for commit in sorted(log.glob("*.json")):
        for line in commit.read_text().splitlines():
            action = json.loads(line)
            if "add" in action:
                live[action["add"]["path"]] = None
            elif "remove" in action:
                live.pop(action["remove"]["path"], None)
    return [str(table / p) for p in live]


# The same rules as seqlake.sessionize and seqlake.sequences, written for DuckDB: a gap of more
# than 30 min ends an activity, an activity is cut into slices of 240 min, a session is (user,
# activity start, slice); then each user's last 50 events before the cutoff, in time order.
DUCKDB_SQL = """
CREATE OR REPLACE TEMP VIEW events AS SELECT * FROM read_parquet({files});
COPY (
  WITH ordered AS (
    SELECT *, lag(ts) OVER w AS prev_ts FROM events
    WINDOW w AS (PARTITION BY user_id ORDER BY ts, event_id)
  ), activity AS (
    SELECT *, max(CASE WHEN prev_ts IS NULL OR epoch_us(ts) - epoch_us(prev_ts) > {gap_us} THEN ts END)
              OVER (PARTITION BY user_id ORDER BY ts, event_id ROWS UNBOUNDED PRECEDING) AS activity_start
    FROM ordered
  ), sliced AS (
    SELECT *, (epoch_us(ts) - epoch_us(activity_start)) // {max_us} AS slice FROM activity
  )
  SELECT *, substr(sha256(concat_ws('|', source, user_id, epoch_us(activity_start)::VARCHAR, slice::VARCHAR)), 1, 32)
         AS session_id,
         row_number() OVER (PARTITION BY user_id, activity_start, slice ORDER BY ts, event_id) AS session_seq
  FROM sliced
) TO '{out}/session_events.parquet' (FORMAT parquet);
COPY (
  SELECT source, user_id, session_id, min(ts) AS session_start, max(ts) AS session_end, count(*) AS n_events,
         count(DISTINCT item_id) AS distinct_items,
         coalesce(sum(CASE WHEN event_type = 'purchase' THEN price END), 0) AS revenue
  FROM read_parquet('{out}/session_events.parquet') GROUP BY ALL
) TO '{out}/sessions.parquet' (FORMAT parquet);
COPY (
  WITH recent AS (
    SELECT user_id, ts, event_id, event_type, item_id, category_id, brand, price, session_seq = 1 AS opens,
           row_number() OVER (PARTITION BY user_id ORDER BY ts DESC, event_id DESC) AS back
    FROM read_parquet('{out}/session_events.parquet') WHERE ts < TIMESTAMP '{cutoff}'
  )
  SELECT user_id, count(*) AS length,
         list(event_type ORDER BY ts, event_id) AS event_types, list(item_id ORDER BY ts, event_id) AS items,
         list(category_id ORDER BY ts, event_id) AS categories, list(brand ORDER BY ts, event_id) AS brands,
         list(price ORDER BY ts, event_id) AS prices, list(opens ORDER BY ts, event_id) AS opens
  FROM recent WHERE back <= {length} GROUP BY user_id
) TO '{out}/sequences.parquet' (FORMAT parquet);
"""


# DUCKDB_SQL's three statements in Spark SQL, step for step (`//` is `div`, `list(x ORDER BY ...)`
# is the sorted collect_list of a struct led by the order keys): what Spark itself needs for the
# peer's work as DuckDB's SQL states it, with none of ours (Delta, encoding, state, labels, audit
# rows). A floor for that SQL, not a proof for every Spark job: a hand-tuned one could differ.
SPARK_PEER_SQL = (
    """
    WITH ordered AS (
      SELECT *, lag(ts) OVER (PARTITION BY user_id ORDER BY ts, event_id) AS prev_ts FROM peer_events
    ), activity AS (
      SELECT *, max(CASE WHEN prev_ts IS NULL OR unix_micros(ts) - unix_micros(prev_ts) > {gap_us} THEN ts END)
                OVER (PARTITION BY user_id ORDER BY ts, event_id ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
                AS activity_start
      FROM ordered
    ), sliced AS (
      SELECT *, (unix_micros(ts) - unix_micros(activity_start)) div {max_us} AS slice FROM activity
    )
    SELECT *, substr(sha2(concat_ws('|', source, user_id, CAST(unix_micros(activity_start) AS STRING),
                                    CAST(slice AS STRING)), 256), 1, 32) AS session_id,
           row_number() OVER (PARTITION BY user_id, activity_start, slice ORDER BY ts, event_id) AS session_seq
    FROM sliced
    """,
    """
    SELECT source, user_id, session_id, min(ts) AS session_start, max(ts) AS session_end, count(*) AS n_events,
           count(DISTINCT item_id) AS distinct_items,
           coalesce(sum(CASE WHEN event_type = 'purchase' THEN price END), 0) AS revenue
    FROM peer_session_events GROUP BY source, user_id, session_id
    """,
    """
    WITH recent AS (
      SELECT user_id, ts, event_id, event_type, item_id, category_id, brand, price, session_seq = 1 AS opens,
             row_number() OVER (PARTITION BY user_id ORDER BY ts DESC, event_id DESC) AS back
      FROM peer_session_events WHERE ts < TIMESTAMP '{cutoff}'
    ), kept AS (
      SELECT user_id, array_sort(collect_list(struct(ts, event_id, event_type, item_id, category_id, brand, price,
                                                     opens))) AS e
      FROM recent WHERE back <= {length} GROUP BY user_id
    )
    SELECT user_id, size(e) AS length, transform(e, x -> x.event_type) AS event_types,
           transform(e, x -> x.item_id) AS items, transform(e, x -> x.category_id) AS categories,
           transform(e, x -> x.brand) AS brands, transform(e, x -> x.price) AS prices,
           transform(e, x -> x.opens) AS opens
    FROM kept
    """,
)


def peer_sql_values(cfg, cutoff: dt.date) -> dict:
    """The settings both peers' SQL is formatted with (DUCKDB_SQL, SPARK_PEER_SQL)."""
    return {"gap_us": cfg.sessionize.gap_minutes * 60_000_000,
            "max_us": cfg.sessionize.max_duration_minutes * 60_000_000,
            "cutoff": cutoff, "length": cfg.sequences.length}


def run_spark_sql_peer(spark, work: Path, cutoff: dt.date, cfg) -> dict:
    """DuckDB's work (``DUCKDB_SQL``) on this Spark session: the same files in, Parquet out."""
    out = work / "spark_sql_peer"
    subprocess.run(["rm", "-rf", str(out)], check=True)
    session_events, sessions, sequences = (q.format(**peer_sql_values(cfg, cutoff)) for q in SPARK_PEER_SQL)
    start = time.monotonic()
    # basePath: the partition columns (source, event_date) come from the paths, as DuckDB reads them.
    events = work / "lake" / "events"
    spark.read.option("basePath", str(events)).parquet(*delta_files(events)).createOrReplaceTempView("peer_events")
    spark.sql(session_events).write.parquet(str(out / "session_events"))
    spark.read.parquet(str(out / "session_events")).createOrReplaceTempView("peer_session_events")
    spark.sql(sessions).write.parquet(str(out / "sessions"))
    spark.sql(sequences).write.parquet(str(out / "sequences"))
    seconds = time.monotonic() - start
    counts = {name: spark.read.parquet(str(out / name)).count() for name in ("session_events", "sessions", "sequences")}
    return {"seconds": seconds, "units": counts["session_events"], **counts,
            "python_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}


def run_duckdb(work: Path, cutoff: dt.date, cfg) -> dict:
    import duckdb

    out = work / "duckdb"
    subprocess.run(["rm", "-rf", str(out)], check=True)
    out.mkdir(parents=True)
    files = delta_files(work / "lake" / "events")
    con = duckdb.connect()
    con.execute("SET threads = 2")  # local[2]'s two cores
    con.execute(f"SET temp_directory = '{out / 'tmp'}'")
    sql = DUCKDB_SQL.format(files="[" + ", ".join(f"'{f}'" for f in files) + "]", out=out,
                            **peer_sql_values(cfg, cutoff))
    start = time.monotonic()
    con.execute(sql)
    seconds = time.monotonic() - start
    counts = {name: con.execute(f"SELECT count(*) FROM read_parquet('{out}/{name}.parquet')").fetchone()[0]
              for name in ("session_events", "sessions", "sequences")}
    return {"seconds": seconds, "units": counts["session_events"], **counts,
            "python_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}


# --------------------------------------------------------------------------- parent side


def add_heavy_user(plain: Path, skewed: Path, events: int, seed: int) -> dict:
    """``skewed``'s landing: ``plain``'s files (hard links) plus one user's ``events`` events
    spread evenly over the same days (views of random items, as a crawler would make)."""
    marker = skewed / "generated.json"
    if marker.exists():
        return json.loads(marker.read_text())
    gen = json.loads((plain / "generated.json").read_text())
    src, dst = plain / "landing", skewed / "landing"
    subprocess.run(["rm", "-rf", str(dst)], check=True)
    subprocess.run(["cp", "-al", str(src), str(dst)], check=True)
    first, last = dt.date.fromisoformat(gen["first_date"]), dt.date.fromisoformat(gen["last_date"])
    days = (last - first).days + 1
    rng = random.Random(seed)
    per_day = events // days
    step = 86_400_000 / per_day
    for d in range(days):
        day = first + dt.timedelta(days=d)
        midnight = dt.datetime.combine(day, dt.time())
        lines = []
        for i in range(per_day):
            ts = midnight + dt.timedelta(milliseconds=int(i * step))
            item = rng.randrange(5000)
            stamp = ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"
            lines.append(
                f'{{"user_id":"heavy0000001","ts":"{stamp}","event_type":"view","item_id":"i{item:07d}",'
                f'"category_id":"c{item % 120:05d}","category_path":"bench.heavy","brand":"b{item % 400}",'
                f'"price":{1 + item % 500}.00,"session":"heavy-{d}"}}'
            )
        folder = dst / "raw" / SOURCE / f"dt={day}"
        (folder / "part-heavy.jsonl").write_text("\n".join(lines) + "\n")
    done = {**gen, "events": gen["events"] + per_day * days, "heavy_user_events": per_day * days}
    marker.write_text(json.dumps(done))
    return done


def run_pipeline(work: Path, gen: dict, driver_memory: str, label: str) -> dict:
    for folder in ("lake", "lower_bound.parquet", "eventlog", "duckdb", "spark_sql_peer"):
        subprocess.run(["rm", "-rf", str(work / folder)], check=True)
    results = {}
    for stage in PIPELINE:
        print(f"== {label}: {stage}", flush=True)
        results[stage] = run_child(stage, work, gen["first_date"], gen["last_date"], driver_memory, script=__file__)
        shown = {k: v for k, v in results[stage].items() if k not in ("tokens",)}
        print(f"   {json.dumps(shown)}", flush=True)
    return results


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def summarise(size_runs: dict, peer: dict | None, skew: dict | None) -> tuple[dict, str]:
    """Per size and stage rows, the target ratios, and the markdown tables."""
    rows, lines = [], []
    lines += ["### Stages", "",
              "| events | stage | wall s | throughput /s | JVM peak RSS MB | executor heap peak MB | "
              "Python driver peak RSS MB | spill mem MB | spill disk MB | shuffle written MB |",
              "|" + "---|" * 10]
    for size, run in size_runs.items():
        events = run["generated"]["events"]
        for stage in PIPELINE:
            m = run["stages"][stage]
            units = m.get("units") or (events if stage == "lower_bound" else None)
            row = {"events": events, "stage": stage, "seconds": round(m["seconds"], 2),
                   "throughput_per_s": round(units / m["seconds"]) if units else None,
                   "unit": "users" if stage in USER_STAGES else ("rows" if stage == "train" else "events"),
                   **{k: m.get(k) for k in ("jvm_peak_rss_mb", "executor_heap_peak_mb", "python_peak_rss_mb",
                                            "memory_spilled_mb", "disk_spilled_mb", "shuffle_written_mb")}}
            rows.append(row)
            fmt = lambda v: "" if v is None else (f"{v:,.0f}" if isinstance(v, (int, float)) else str(v))  # noqa: E731
            lines.append(
                f"| {events:,} | {stage}{' (untimed prerequisite)' if stage == 'train' else ''} | "
                f"{m['seconds']:.1f} | {fmt(row['throughput_per_s'])} {row['unit'] if units else ''} | "
                f"{fmt(m.get('jvm_peak_rss_mb'))} | {fmt(m.get('executor_heap_peak_mb'))} | "
                f"{fmt(m.get('python_peak_rss_mb'))} | {fmt(m.get('memory_spilled_mb'))} | "
                f"{fmt(m.get('disk_spilled_mb'))} | {fmt(m.get('shuffle_written_mb'))} |")

    targets = []
    for size, run in size_runs.items():
        s, events = run["stages"], run["generated"]["events"]
        lb = s["lower_bound"]["seconds"]
        targets += [
            {"events": events, "target": "(ingest + sessionize) / lower bound", "limit": "<= 2.0",
             "value": ratio(s["ingest"]["seconds"] + s["sessionize"]["seconds"], lb)},
            {"events": events, "target": "sequences / lower bound", "limit": "<= 2.0",
             "value": ratio(s["sequences"]["seconds"], lb)},
            {"events": events, "target": "state_nightly / sequences", "limit": "< 0.20",
             "value": ratio(s["state_nightly"]["seconds"], s["sequences"]["seconds"])},
            {"events": events, "target": "JVM peak RSS MB (max over stages)", "limit": "< 2048",
             "value": max(m["jvm_peak_rss_mb"] for m in s.values() if "jvm_peak_rss_mb" in m)},
        ]
    sizes = sorted(size_runs)
    pipeline_s = {n: sum(size_runs[n]["stages"][st]["seconds"] for st in TIMED) for n in sizes}
    if len(sizes) > 1:
        small, large = sizes[0], sizes[-1]
        jvm = {n: max(m["jvm_peak_rss_mb"] for m in size_runs[n]["stages"].values() if "jvm_peak_rss_mb" in m)
               for n in sizes}
        heap = {n: max(m.get("executor_heap_peak_mb") or 0 for m in size_runs[n]["stages"].values()) for n in sizes}
        targets += [
            {"events": f"{small:,} -> {large:,}", "target": "pipeline time ratio / events ratio (1.0 = linear)",
             "limit": "t(50M)/t(10M) <= 5.5 (1.1 x linear)",
             "value": ratio(pipeline_s[large] / pipeline_s[small], large / small)},
            {"events": f"{small:,} -> {large:,}", "target": "JVM peak RSS growth", "limit": "<= 1.2",
             "value": ratio(jvm[large], jvm[small])},
            {"events": f"{small:,} -> {large:,}", "target": "executor heap peak growth", "limit": "<= 1.2",
             "value": ratio(heap[large], heap[small])},
        ]
        if 10_000_000 in size_runs and 50_000_000 in size_runs:
            targets.append({"events": "10M -> 50M", "target": "t(50M) / t(10M)", "limit": "<= 5.5",
                            "value": ratio(pipeline_s[50_000_000], pipeline_s[10_000_000])})
    if peer:
        ours = peer["ours_sessionize_s"] + peer["ours_sequences_s"]
        targets.append({"events": peer["events"], "target": "(sessionize + sequences) / DuckDB", "limit": "<= 3.0",
                        "value": ratio(ours, peer["duckdb"]["seconds"])})
        if peer.get("spark_sql_peer"):
            # Not a target: the floor under the one above (DuckDB's SQL run by Spark, nothing of ours).
            targets.append({"events": peer["events"], "target": "DuckDB's SQL on Spark / DuckDB (the floor of the "
                            "row above)", "limit": "", "value": ratio(peer["spark_sql_peer"]["seconds"],
                                                                       peer["duckdb"]["seconds"])})
            targets.append({"events": peer["events"], "target": "(sessionize + sequences) / DuckDB's SQL on Spark",
                            "limit": "", "value": ratio(ours, peer["spark_sql_peer"]["seconds"])})
    if skew:
        for stage in TIMED:
            targets.append({"events": skew["events"], "target": f"skewed / plain: {stage}", "limit": "<= 1.5",
                            "value": ratio(skew["stages"][stage]["seconds"], skew["plain"][stage]["seconds"])})
    lines += ["", "### Targets", "", "| events | measure | target | measured |", "|---|---|---|---|"]
    for t in targets:
        ev = f"{t['events']:,}" if isinstance(t["events"], int) else t["events"]
        lines.append(f"| {ev} | {t['target']} | {t['limit']} | {t['value']} |")
    lines += ["", "Pipeline seconds (timed stages): " + ", ".join(f"{n:,}: {pipeline_s[n]:.0f}" for n in sizes)]
    return {"stages": rows, "targets": targets, "pipeline_seconds": pipeline_s}, "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="2000000,10000000", help="comma-separated generated event counts")
    parser.add_argument("--peer-size", type=int, default=10_000_000,
                        help="size at which DuckDB runs beside us (0: skip; must be one of --sizes)")
    parser.add_argument("--skew-size", type=int, default=10_000_000,
                        help="size whose input gets the heavy user (0: skip; must be one of --sizes)")
    parser.add_argument("--skew-events", type=int, default=1_000_000, help="the heavy user's events")
    parser.add_argument("--with-component-benches", action="store_true",
                        help="also run bench_training.py and bench_scoring.py and keep their ratios")
    parser.add_argument("--work", default="/tmp/seqlake-bench", help="scratch folder (generated data is reused)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--driver-memory", default="1g",
                        help="spark.driver.memory of every stage (default: %(default)s; the JVM's resident "
                             "peak is this plus Spark's off-heap and the JIT)")
    parser.add_argument("--job", dest="stage", help=argparse.SUPPRESS)
    parser.add_argument("--from", dest="date_from", help=argparse.SUPPRESS)
    parser.add_argument("--to", dest="date_to", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        from seqlake.progress import configure_logging

        configure_logging()
        result = run_stage(args.stage, Path(args.work), dt.date.fromisoformat(args.date_from),
                           dt.date.fromisoformat(args.date_to), args.driver_memory)
        print("RESULT " + json.dumps(result, default=str))
        return

    sizes = [int(s) for s in args.sizes.split(",")]
    for name, value in (("--peer-size", args.peer_size), ("--skew-size", args.skew_size)):
        if value and value not in sizes:
            parser.error(f"{name} {value} is not one of --sizes")
    started = time.monotonic()
    size_runs, peer, skew = {}, None, None
    for size in sizes:
        work = Path(args.work) / f"events-{size}"
        work.mkdir(parents=True, exist_ok=True)
        print(f"== {size:,} events: generating (reused when present)", flush=True)
        gen = generate_once(work, size, args.seed)
        stages = run_pipeline(work, gen, args.driver_memory, f"{size:,}")
        size_runs[size] = {"generated": gen, "stages": stages}
        if size == args.peer_size:
            print(f"== {size:,}: DuckDB peer, and the same SQL on Spark", flush=True)
            peer = {"events": gen["events"],
                    **{name: run_child(name, work, gen["first_date"], gen["last_date"], args.driver_memory,
                                       script=__file__) for name in ("duckdb", "spark_sql_peer")},
                    "ours_sessionize_s": stages["sessionize"]["seconds"],
                    "ours_sequences_s": stages["sequences"]["seconds"]}
            print(f"   {peer}", flush=True)
        if size == args.skew_size:
            skewed = Path(args.work) / f"events-{size}-skew"
            skewed.mkdir(parents=True, exist_ok=True)
            sgen = add_heavy_user(work, skewed, args.skew_events, args.seed)
            skew = {"events": sgen["events"], "heavy_user_events": sgen["heavy_user_events"], "plain": stages,
                    "stages": run_pipeline(skewed, sgen, args.driver_memory, f"{size:,} + heavy user")}
    components = {}
    if args.with_component_benches:
        for script in ("bench_training.py", "bench_scoring.py"):
            print(f"== {script}", flush=True)
            subprocess.run([sys.executable, str(REPO / "bench" / script)], check=True, cwd=REPO)
            latest = sorted((REPO / "bench" / "results").glob(script.replace("bench_", "").replace(".py", "") + "-*.json"))
            components[script] = json.loads(latest[-1].read_text()) if latest else None
    data, table = summarise(size_runs, peer, skew)
    data.update(raw={str(k): v for k, v in size_runs.items()}, peer=peer,
                skew={k: v for k, v in (skew or {}).items() if k != "plain"} or None,
                components=components, total_seconds=time.monotonic() - started)
    save_results("suite", data, table)


if __name__ == "__main__":
    main()
