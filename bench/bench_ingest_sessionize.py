"""Ingest + sessionize throughput against a lower-bound Spark job, measured side by side.

For each size (default 2M and 10M generated events) this runs, each in a fresh JVM on
``local[2]``:
  1. lower bound: read the raw JSON, repartition by user, sort within partitions by user and
     time, write Parquet -- the least any per-user pipeline over this input must do;
  2. ``ingest`` of all days (one backfill run);
  3. ``sessionize`` of all days (one batch run).
It prints events per second, wall times, the ratio (ingest + sessionize) / lower bound, and the
peak resident memory of each driver (the JVM, which in local mode is also the executor, and the
Python driver), then writes bench/results/ingest_sessionize-<time>.{json,md}.

Targets (issue 2): ratio <= 2.0; driver peak memory < 2 GB and flat across sizes.

    .venv/bin/python bench/bench_ingest_sessionize.py --sizes 2000000,10000000
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"


def bench_settings(work: Path, driver_memory: str = "2g") -> list[str]:
    return [
        "spark.master=local[2]",
        f"spark.driver_memory={driver_memory}",
        "lake.catalog=in_memory",
        f"lake.root={work / 'lake'}",
        f"lake.landing_root={work / 'landing'}",
        f"ingest.sources_dir={REPO / 'conf' / 'sources'}",
    ]


def jvm_peak_rss_mb(spark) -> float:
    pid = spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid()
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def run_job(job: str, work: Path, date_from: str, date_to: str, driver_memory: str) -> dict:
    """Run one job in this process (called in a child process) and return its measurements."""
    from seqlake.config import load_config
    from seqlake.spark import build_spark

    cfg = load_config(REPO / "conf" / "local.yaml", bench_settings(work, driver_memory))
    spark = build_spark(cfg)
    start = time.monotonic()
    info: dict = {}
    if job == "lower_bound":
        import pyspark.sql.functions as F

        df = spark.read.schema("user_id string, ts string, event_type string, item_id string, "
                               "category_id string, category_path string, brand string, price double, "
                               "session string").json(f"{cfg.lake.landing_root}/raw/generator/dt=*/*.jsonl")
        (df.repartition("user_id").sortWithinPartitions("user_id", "ts")
         .write.mode("overwrite").parquet(str(work / "lower_bound.parquet")))
        info["rows"] = spark.read.parquet(str(work / "lower_bound.parquet")).select(F.count(F.lit(1))).first()[0]
    elif job == "ingest":
        from seqlake.ingest import ingest
        from seqlake.sources import load_source

        result = ingest(spark, cfg, load_source(cfg.ingest.sources_dir, "generator"),
                        window_start=dt.date.fromisoformat(date_from), window_end=dt.date.fromisoformat(date_to))
        info.update(rows=result.rows_read, written=result.rows_written, balanced=result.balanced)
    elif job == "sessionize":
        from seqlake.sessionize import sessionize

        result = sessionize(spark, cfg, source="generator", date_from=dt.date.fromisoformat(date_from),
                            date_to=dt.date.fromisoformat(date_to))
        info.update(rows=result.events_in, sessions=result.sessions_touched, balanced=result.balanced)
    info["seconds"] = time.monotonic() - start
    info["jvm_peak_rss_mb"] = jvm_peak_rss_mb(spark)
    spark.stop()
    info["python_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return info


def generate_once(work: Path, events: int, seed: int) -> dict:
    """Generate ``events`` events into ``work`` unless a matching manifest is already there."""
    from seqlake.config import load_config
    from seqlake.generate import generate

    marker = work / "generated.json"
    if marker.exists():
        done = json.loads(marker.read_text())
        if done.get("requested") == events and done.get("seed") == seed:
            return done
    cfg = load_config(
        REPO / "conf" / "local.yaml",
        [*bench_settings(work), f"generator.users={max(1000, events // 40)}", f"generator.max_events={events}",
         "generator.days=28", f"generator.seed={seed}", "generator.files_per_day=2"],
    )
    start = time.monotonic()
    summary = generate(cfg.generator, cfg.lake.landing_root, progress=lambda m: print("  " + m, flush=True))
    done = {"requested": events, "seed": seed, "events": summary.events_written, "users": summary.users,
            "first_date": str(summary.first_date), "last_date": str(summary.last_date),
            "generate_seconds": time.monotonic() - start}
    marker.write_text(json.dumps(done))
    return done


def child(job: str, work: Path, date_from: str, date_to: str, driver_memory: str, script: str = __file__,
          extra: tuple[str, ...] | list[str] = ()) -> dict:
    """Run ``script --job job ... *extra`` in a fresh Python and JVM; return its RESULT line."""
    # PYSPARK_PYTHON: stages with Python workers (scoring) must run this venv's Python.
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYSPARK_PYTHON": sys.executable}
    proc = subprocess.run(
        [sys.executable, script, "--job", job, "--work", str(work), "--from", date_from, "--to", date_to,
         "--driver-memory", driver_memory, *extra],
        capture_output=True, text=True, env=env, cwd=REPO,
    )
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stderr[-5000:])
        raise SystemExit(f"{job} failed with exit code {proc.returncode}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="2000000,10000000", help="comma-separated event counts")
    parser.add_argument("--work", default="/tmp/seqlake-bench", help="scratch folder (generated data is reused)")
    parser.add_argument("--seed", type=int, default=11)
    # 1g, as bench/run.py: the JVM's resident peak is the heap plus Spark's off-heap and the JIT,
    # so a 2g heap alone passed the 2 GB target (2,298 MB at 10M) while 1g runs both jobs.
    parser.add_argument("--driver-memory", default="1g", help="spark.driver.memory of every job (default: %(default)s)")
    parser.add_argument("--job", help=argparse.SUPPRESS)
    parser.add_argument("--from", dest="date_from", help=argparse.SUPPRESS)
    parser.add_argument("--to", dest="date_to", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.job:
        print("RESULT " + json.dumps(run_job(args.job, Path(args.work), args.date_from, args.date_to,
                                             args.driver_memory)))
        return

    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        work = Path(args.work) / f"events-{size}"
        work.mkdir(parents=True, exist_ok=True)
        print(f"== {size:,} events: generating (reused when present)", flush=True)
        gen = generate_once(work, size, args.seed)
        for table_dir in ("lake", "lower_bound.parquet"):
            subprocess.run(["rm", "-rf", str(work / table_dir)], check=True)
        measured = {}
        for job in ("lower_bound", "ingest", "sessionize"):
            print(f"== {size:,} events: {job}", flush=True)
            measured[job] = child(job, work, gen["first_date"], gen["last_date"], args.driver_memory)
            print(f"   {measured[job]}", flush=True)
        ours = measured["ingest"]["seconds"] + measured["sessionize"]["seconds"]
        rows.append({
            "events": gen["events"],
            "users": gen["users"],
            "lower_bound_s": measured["lower_bound"]["seconds"],
            "ingest_s": measured["ingest"]["seconds"],
            "sessionize_s": measured["sessionize"]["seconds"],
            "ingest_plus_sessionize_events_per_s": gen["events"] / ours,
            "ratio_to_lower_bound": ours / measured["lower_bound"]["seconds"],
            "jvm_peak_rss_mb": max(m["jvm_peak_rss_mb"] for m in measured.values()),
            "python_driver_peak_rss_mb": max(m["python_peak_rss_mb"] for m in measured.values()),
            "balanced": measured["ingest"]["balanced"] and measured["sessionize"]["balanced"],
            "detail": measured,
        })

    header = ("| events | users | lower bound s | ingest s | sessionize s | events/s | ratio (target <= 2.0) "
              "| JVM driver peak RSS MB | Python driver peak RSS MB | balanced |")
    lines = [header, "|" + "---|" * 10]
    for r in rows:
        lines.append(
            f"| {r['events']:,} | {r['users']:,} | {r['lower_bound_s']:.1f} | {r['ingest_s']:.1f} | "
            f"{r['sessionize_s']:.1f} | {r['ingest_plus_sessionize_events_per_s']:,.0f} | "
            f"{r['ratio_to_lower_bound']:.2f} | {r['jvm_peak_rss_mb']:.0f} | {r['python_driver_peak_rss_mb']:.0f} | "
            f"{r['balanced']} |"
        )
    save_results("ingest_sessionize", rows, "\n".join(lines))


def save_results(name: str, data, table: str) -> None:
    """Print the table and keep it with the raw figures in bench/results/<name>-<time>.{json,md}."""
    print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%dT%H%M%S")
    (RESULTS / f"{name}-{stamp}.json").write_text(json.dumps(data, indent=2))
    (RESULTS / f"{name}-{stamp}.md").write_text(table + "\n")
    print(f"results: {RESULTS}/{name}-{stamp}.json")


if __name__ == "__main__":
    main()
