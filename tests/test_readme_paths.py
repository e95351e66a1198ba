"""Every path the README and the demo's closing lines tell a user to take, taken as written.

The commands are read from README.md and from what `make demo` prints at its end at test time,
so a changed line is tested in its new form, and a new command fails
``test_every_command_shown_is_run_or_excluded`` until it is run here or excluded with a reason.

They run in a stand-in checkout: a temporary folder holding symlinks to the repository's files
(Makefile, .venv, .venv-airflow, conf, jobs ...) and a small generated lake as ``lake/``, laid
out as `make demo` leaves it. The commands resolve ``lake/``, ``conf/local.yaml`` and ``$PWD``
against the working directory, so running them there points them at the test lake without
editing them; the environment is the caller's with the virtual environments taken off PATH (a
new shell after `make demo`). One Airflow start (`make airflow`, as the demo's last lines say)
runs the README's Orchestration commands while it serves: `backfill create` of two nights while
the DAG is still paused, then `dags unpause` (both nights may run at once; the DAG's dependencies
order their writes), watched through Airflow's REST API. On the lake it leaves: the nights'
tables against `seqlake nightly` of the same days, a corrupt day stopped by the README's
`airflow dags test`, and the README's other commands; on a copy of the history, the weekly gate
as its own step.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from pyspark.testing import assertDataFrameEqual

from seqlake import constants as C
from seqlake import tables

from conftest import REPO, TEST_JVM_OPTS, TEST_SETTINGS, make_config
from test_airflow import AIRFLOW_VENV, SMALL, START, build_history

# The demo's 28 days, 600 users, and one more: days through HISTORY_END ingested and
# sessionized in-process, NIGHTS the two Airflow backfills (the last the demo's last day, which
# the README's examples name), CORRUPT the one `airflow dags test` is given with garbage added.
# Some dirty records, so that the README's quarantine query has rows to show.
HISTORY_END = dt.date(2024, 1, 26)
NIGHTS = [dt.date(2024, 1, 27), dt.date(2024, 1, 28)]
NIGHT = NIGHTS[-1]
CORRUPT = dt.date(2024, 1, 29)
LAKE = (*SMALL, "generator.days=29", "generator.dirty_rate=0.01")
API = "http://localhost:8080"  # make airflow's port, as the README says
MLFLOW_PORT = 5000  # `mlflow ui`'s default: neither command gives --port
# What runs leave in a checkout (and .git): the stand-in checkout links everything else to the repository.
OUTPUTS = {".git", ".airflow", "lake", "spark-warehouse", "metastore_db", "derby.log", "mlruns", "mlflow.db",
           ".pytest_cache"}

# Commands shown but not run here, each with the reason (keep this short).
EXCLUDED = {
    "make demo": "the demo itself (20+ minutes): this module's lake stands in for the lake it leaves",
    "make test": "the whole suite, this module included",
    ".venv/bin/python -m pytest": "the suite's quick part, run by make test like this module",
    ".venv/bin/seqlake train": "training on the demo's days takes minutes; tests/test_training.py trains "
                               "with 1 and 2 workers, and this module's lake trains its champion the same way",
    ".venv-airflow/bin/airflow dags test": "run with the corrupt day's date instead (a whole good night "
                                           "in-process would take minutes): test_a_corrupt_landing_day...",
    "make cluster-up": "the loopback cluster (a minute, five servers): tests/test_cluster.py starts it the same way",
    'eval "$(.venv/bin/python -m seqlake.localcluster env)"': "the cluster's keys: tests/test_cluster.py passes "
                                                               "them the same way",
    ".venv/bin/seqlake --conf conf/cluster.local.yaml": "tests/test_cluster.py runs these on its cluster",
    "make cluster-down": "tests/test_cluster.py stops its cluster the same way",
    ".venv-airflow/bin/airflow backfill create": "run with --from-date of the first of NIGHTS instead: the "
                                                 "stand-in's history ends the day before, not at the demo's last "
                                                 "day, and two nights test the DAG's ordering",
}


@dataclass(frozen=True)
class Command:
    text: str           # as shown (continuation lines included), run with bash -c
    where: str          # "README.md line N" or "make demo"
    setup: str = ""     # the `export ...` lines before it in the same block

    @property
    def line(self) -> str:
        """The command on one line, without a trailing comment: what exclusions and runners match."""
        one = re.sub(r"\\\n\s*", "", self.text)
        return re.sub(r"\s+#.*$", "", one).strip()


# --------------------------------------------------------------------------- what is shown


def readme_commands(text: str | None = None) -> list[Command]:
    """Every command line of the README's ```bash blocks (``export`` lines become the setup of the
    commands after them), and the inline commands written out whole for copying: code spans that
    start with ``PATH=``, ``spark-sql``, ``spark-submit`` or a virtual environment's ``bin/`` and
    have arguments. Inline ``seqlake ...`` and ``make ...`` spans name commands in prose (with
    placeholders such as ``--date D``); the demo's closing lines give ``make airflow``."""
    text = (REPO / "README.md").read_text(encoding="utf-8") if text is None else text
    found: list[tuple[int, Command]] = []
    blocks = list(re.finditer(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M))
    for block in blocks:
        if block.group(1) != "bash":
            continue
        first_line = text.count("\n", 0, block.start(2)) + 1
        setup: list[str] = []
        for offset, command in _logical_lines(block.group(2)):
            if command.startswith("export "):
                setup.append(command)
                continue
            where = f"README.md line {first_line + offset}"
            found.append((block.start(2) + offset, Command(command, where, "\n".join(setup))))
    prose = text
    for block in reversed(blocks):  # blank out the blocks, keeping offsets
        prose = prose[:block.start()] + " " * (block.end() - block.start()) + prose[block.end():]
    for span in re.finditer(r"`([^`]+)`", prose):
        command = re.sub(r"\s*\n\s*", " ", span.group(1)).strip()
        if " " in command and command.startswith(("PATH=", "spark-sql ", "spark-submit ", ".venv/bin/",
                                                  ".venv-airflow/bin/")):
            where = f"README.md line {text.count(chr(10), 0, span.start()) + 1}"
            found.append((span.start(), Command(command, where)))
    return [command for _, command in sorted(found, key=lambda pair: pair[0])]


def _logical_lines(block: str) -> list[tuple[int, str]]:
    """(line offset, command) per command of a shell block; backslash continuations stay in."""
    out, current, start = [], "", 0
    for i, line in enumerate(block.splitlines()):
        if not current:
            start = i
        current += line
        if line.endswith("\\"):
            current += "\n"
            continue
        if current.strip() and not current.strip().startswith("#"):
            out.append((start, current.strip()))
        current = ""
    return out


def demo_closing_lines(checkout: Path) -> dict[str, str]:
    """What `make demo` prints after its last blank line, label -> text, as it prints them in
    ``checkout`` (make expands $(CURDIR) to it). `make -n` prints the recipe without running it."""
    done = subprocess.run(["make", "-n", "demo"], cwd=checkout, env=user_env(), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    echoes = [line for line in done.stdout.splitlines() if line == "echo" or line.startswith("echo ")]
    assert "echo" in echoes, done.stdout
    closing = echoes[len(echoes) - echoes[::-1].index("echo"):]
    lines = {}
    for echo in closing:
        printed = subprocess.run(["bash", "-c", echo], capture_output=True, text=True, check=True).stdout.strip()
        label, _, value = printed.partition(":")
        lines[label.strip()] = value.strip()
    return lines


def demo_commands(closing: dict[str, str]) -> list[Command]:
    """The closing lines that give a command: the text after the label, up to its note in
    parentheses ("Lake tables" gives paths, checked by the nights' test)."""
    return [Command(re.split(r"\s{2,}\(", value)[0], f"make demo: {label}")
            for label, value in closing.items() if label != "Lake tables (Delta)"]


def excluded_reason(command: Command) -> str | None:
    return next((reason for prefix, reason in EXCLUDED.items() if command.line.startswith(prefix)), None)


def kind(command: Command) -> str | None:
    """Which runner below takes the command (None: none does)."""
    line = command.line
    if line == "make airflow":
        return "make airflow"
    if re.search(r"(^|/)seqlake sql ", line):
        return "seqlake sql"
    if re.search(r"(^|/)mlflow ui( |$)", line):
        return "mlflow ui"
    if re.search(r"(^|[ /])spark-sql( |$)", line):
        return "spark-sql"
    if re.search(r"(^|[ /])spark-submit ", line):
        return "spark-submit"
    if line.startswith(".venv-airflow/bin/airflow "):
        return "airflow cli"
    return None


# --------------------------------------------------------------------------- environment


def user_env() -> dict[str, str]:
    """The caller's environment as a new shell after `make demo` has it: no virtual environment
    on PATH or active, no Airflow, Spark or seqlake variables but the tests' JVM flags."""
    venv_bins = {(REPO / ".venv" / "bin").resolve(), (AIRFLOW_VENV / "bin").resolve()}
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AIRFLOW", "SEQLAKE_", "PYSPARK", "SPARK_", "VIRTUAL_ENV", "MLFLOW_", "PYTEST_"))}
    env["SPARK_SUBMIT_OPTS"] = TEST_JVM_OPTS  # the tests' JVM flags (conftest): speed only
    env["PATH"] = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                                  if p and Path(p).resolve() not in venv_bins)
    return env


def lake_settings(checkout: Path) -> list[str]:
    """The overrides that point the pipeline at the test lake, with the test's small settings."""
    return [*TEST_SETTINGS, f"lake.root={checkout / 'lake'}", f"lake.landing_root={checkout / 'lake'}", *LAKE]


def lake_config(checkout: Path):
    """The config of the lake under ``checkout/lake`` (its landing files beside its tables)."""
    return make_config(checkout, *LAKE, f"lake.landing_root={checkout / 'lake'}")


def airflow_env(checkout: Path) -> dict[str, str]:
    """A user's environment plus only what points the DAGs' jobs at the test lake (README
    Orchestration: SEQLAKE_* settings), a smaller driver and quick retries."""
    return {**user_env(), "SEQLAKE_SET": ";".join(lake_settings(checkout)), "SEQLAKE_DRIVER_MEMORY": "1g",
            "SEQLAKE_RETRY_MINUTES": "0.25"}


def _checkout(at: Path) -> Path:
    at.mkdir(parents=True, exist_ok=True)
    for entry in REPO.iterdir():
        if entry.name not in OUTPUTS:
            (at / entry.name).symlink_to(entry)
    return at


# --------------------------------------------------------------------------- processes


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _marked(marker: str) -> list[int]:
    """Processes whose command line or environment names ``marker`` (a path of this test's):
    the ones a server started, including those that left its process group."""
    pids, needle = [], marker.encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if needle in (proc / "cmdline").read_bytes() or needle in (proc / "environ").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def _start(command: Command, cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen(["bash", "-c", "\n".join(filter(None, [command.setup, command.text]))], cwd=cwd,
                                env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _stop(process: subprocess.Popen, marker: str) -> list[int]:
    """SIGTERM the process group and let it shut down, then SIGKILL what is left of it and every
    process still marked with ``marker``; returns the pids that had to be killed."""
    killed = []
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)  # some member of the group is still there
        except ProcessLookupError:
            break
        process.poll()
        time.sleep(1)
    try:
        os.killpg(process.pid, signal.SIGKILL)
        killed.append(process.pid)
    except ProcessLookupError:
        pass
    process.wait(timeout=30)
    for pid in _marked(marker):
        try:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except ProcessLookupError:
            pass
    return killed


def _http(method: str, url: str, token: str | None = None, body: dict | None = None) -> tuple[int, object]:
    """(status, decoded JSON or text); status 0 when nothing answers."""
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    request = urllib.request.Request(url, method=method, headers=headers,
                                     data=None if body is None else json.dumps(body).encode())
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            raw = response.read().decode()
            status = response.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read().decode(errors="replace"), exc.code
    except (urllib.error.URLError, OSError) as exc:
        return 0, str(exc)
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw


def _wait(what: str, check, timeout_s: float, alive: subprocess.Popen, log: Path, every_s: float = 5):
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        assert alive.poll() is None, f"stopped while waiting for {what}:\n{log.read_text()[-6000:]}"
        # standalone keeps serving when one of its components dies (it restarts none): a dead
        # scheduler would leave the wait to run out its whole timeout.
        text = log.read_text(errors="replace")
        assert "Exited execute loop" not in text, f"a component stopped while waiting for {what}:\n{text[-6000:]}"
        assert time.monotonic() < deadline, f"no {what} after {timeout_s:.0f}s:\n{log.read_text()[-6000:]}"
        time.sleep(every_s)


# --------------------------------------------------------------------------- the lake


@pytest.fixture(scope="module")
def checkout(spark, tmp_path_factory):
    """(stand-in checkout, config, pristine copy): a lake as `make demo` lays it out (tables and
    landing files under ``lake/``), days through HISTORY_END ingested and sessionized, a
    vocabulary, a labelled snapshot and a champion; NIGHTS and CORRUPT wait in the landing
    folder. The copy (taken before Airflow runs) holds the same history for the comparisons."""
    started = time.monotonic()
    base = tmp_path_factory.mktemp("readme")
    root = _checkout(base / "checkout")
    cfg = lake_config(root)
    build_history(spark, cfg, HISTORY_END)
    pristine = base / "history"
    shutil.copytree(root / "lake", pristine / "lake")
    print(f"lake: {time.monotonic() - started:.0f}s")
    return root, cfg, pristine


def _history_copy(pristine: Path, to: Path):
    """A copy of the pristine history and its config (Delta logs hold relative paths; the MLflow
    registry keeps pointing at the checkout's model artifacts, which stay put)."""
    shutil.copytree(pristine / "lake", to / "lake")
    return lake_config(to)


def _orchestration_commands() -> list[Command]:
    """The README's Airflow commands run while `make airflow` serves: `backfill create` from the
    first of NIGHTS (see EXCLUDED), then `dags unpause` as written."""
    out = []
    for command in readme_commands():
        if kind(command) != "airflow cli":
            continue
        if " backfill create " in command.text:
            text = re.sub(r"--from-date \S+", f"--from-date {NIGHTS[0]}", command.text)
            assert f"--to-date {NIGHTS[-1]}" in text, command.text
            out.append(dataclasses.replace(command, text=text))
        elif not excluded_reason(command):
            out.append(command)
    assert [c.line.split()[1:3] for c in out] == [["backfill", "create"], ["dags", "unpause"]], out
    return out


def _task_logs(home: Path, task_id: str) -> dict[str, str]:
    """run id -> the text of every attempt's log of ``task_id`` in that run."""
    out: dict[str, str] = {}
    for path in sorted((home / "logs" / "dag_id=seqlake_nightly").glob(f"run_id=*/task_id={task_id}/attempt=*.log")):
        run_id = path.parent.parent.name[len("run_id="):]
        out[run_id] = out.get(run_id, "") + path.read_text(errors="replace")
    return out


def _failed_task_logs(home: Path, limit: int = 6000) -> str:
    """The tail of every task log that records a failure: what a failed run shows."""
    out = []
    for path in sorted((home / "logs").rglob("*.log")):
        text = path.read_text(errors="replace")
        if "error" in text.lower() or "failed" in text.lower():
            out.append(f"--- {path.relative_to(home)}\n{text[-limit:]}")
    return "\n".join(out)[-4 * limit:]


# --------------------------------------------------------------------------- make airflow


@pytest.fixture(scope="module")
def nights(checkout):
    """`make airflow` as the demo's closing line gives it, in the checkout; the README's
    `backfill create` of NIGHTS and `dags unpause` run beside it, the backfill's runs watched
    through the REST API to their end; then everything stopped."""
    root, _, _ = checkout
    schedule = Command(demo_closing_lines(root)["Schedule it"].split("  (")[0], "make demo: Schedule it")
    assert schedule.line == "make airflow", schedule
    # A test never installs: make airflow would (re)create the environments if they were stale.
    stale = subprocess.run(["make", "-q", ".venv/.installed", ".venv-airflow/.installed"], cwd=root,
                           env=user_env(), capture_output=True, text=True)
    assert stale.returncode == 0, "the environments are not up to date: run `make setup` first"
    assert not _listening(8080), "something already listens on 8080, where make airflow serves"
    home, log = root / ".airflow", root / "airflow.log"  # the README: AIRFLOW_HOME=.airflow
    started = time.monotonic()
    server = _start(schedule, root, airflow_env(root), log)
    out: dict = {"log": log, "home": home}
    try:
        def healthy():
            status, body = _http("GET", f"{API}/api/v2/monitor/health")
            parts = ("metadatabase", "scheduler", "triggerer", "dag_processor")
            return status == 200 and all((body.get(p) or {}).get("status") == "healthy" for p in parts) and body

        # A task's supervisor gives up on an execution API that does not answer within ~30 s:
        # nothing is started before every component reports healthy.
        out["health"] = _wait("healthy Airflow", healthy, 300, server, log)
        out["up_s"] = time.monotonic() - started
        # The README: log in as admin with the password kept in .airflow/.
        passwords = json.loads((home / "simple_auth_manager_passwords.json.generated").read_text())
        status, body = _http("POST", f"{API}/auth/token", body={"username": "admin", "password": passwords["admin"]})
        assert status == 201, (status, body)
        token = body["access_token"]
        _wait("seqlake_nightly in the API", lambda: _http("GET", f"{API}/api/v2/dags/seqlake_nightly", token)[0] == 200,
              180, server, log)
        # From "another shell with the same variables" (the block's export line). The running
        # scheduler and DAG processor write the same sqlite file: a command that finds it
        # locked has undone what it wrote (backfill create deletes its partial backfill) and is
        # tried again.
        for command in _orchestration_commands():
            for _ in range(6):
                done = _run(command, root, airflow_env(root), timeout=300)
                if done.returncode == 0 or "database is locked" not in done.stdout + done.stderr:
                    break
                time.sleep(5)
            assert done.returncode == 0, f"{command.line}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"

        def finished():
            # Unpausing also queues the scheduled run of the latest interval (its sensor waits
            # for files that never come): the backfill's runs are counted apart.
            status, body = _http("GET", f"{API}/api/v2/dags/seqlake_nightly/dagRuns?limit=100", token)
            runs = [r for r in body["dag_runs"] if r["run_type"] == "backfill"] if status == 200 else []
            return len(runs) == len(NIGHTS) and all(r["state"] in ("success", "failed") for r in runs) and runs

        out["runs"] = sorted(_wait("end of the backfill's runs", finished, 2400, server, log, every_s=15),
                             key=lambda r: r["logical_date"])
        out["run_s"] = time.monotonic() - started - out["up_s"]
        out["tasks"] = {
            r["dag_run_id"]: {t["task_id"]: t["state"] for t in _http(
                "GET", f"{API}/api/v2/dags/seqlake_nightly/dagRuns/{r['dag_run_id']}/taskInstances", token)[1]
                ["task_instances"]}
            for r in out["runs"]}
    finally:
        out["killed"] = _stop(server, str(root))
        out["left"] = _marked(str(root))
        deadline = time.monotonic() + 30
        while _listening(8080) and time.monotonic() < deadline:
            time.sleep(1)
        out["listening"] = _listening(8080)
    print(f"make airflow: healthy after {out['up_s']:.0f}s, backfill of {len(NIGHTS)} nights "
          f"{[r['state'] for r in out['runs']]} after {out['run_s']:.0f}s; {len(out['killed'])} killed after SIGTERM")
    return out


def _dates(spark, cfg, table: str, column: str) -> list[dt.date]:
    return sorted(r[0] for r in tables.read(spark, cfg, table).select(column).distinct().collect())


@pytest.mark.slow
def test_make_airflow_backfills_two_nights_as_the_readme_says_and_stops_cleanly(spark, checkout, nights):
    root, cfg, _ = checkout
    runs = nights["runs"]
    assert [(r["logical_date"][:10], r["state"]) for r in runs] == [(d.isoformat(), "success") for d in NIGHTS], \
        f"{nights['tasks']}\n{_failed_task_logs(nights['home'])}\n{nights['log'].read_text()[-3000:]}"
    for run_id, task_states in nights["tasks"].items():
        assert set(task_states.values()) == {"success"} and len(task_states) == 8, (run_id, task_states)
    # Every table the demo's closing line lists is a Delta table at the path it prints.
    closing = demo_closing_lines(root)["Lake tables (Delta)"]
    folder, names = re.fullmatch(r"(.*)/\{(.*)\}", closing).groups()
    assert Path(folder) == root / "lake"
    assert [n for n in names.split(",") if not (Path(folder) / n / "_delta_log").is_dir()] == []
    # Stopped: nothing it started is left, nothing listens on 8080.
    assert nights["left"] == [] and not nights["listening"], nights


@pytest.mark.slow
def test_the_backfilled_tables_hold_exactly_those_nights(spark, checkout, nights):
    root, cfg, _ = checkout
    assert all(r["state"] == "success" for r in nights["runs"])
    every_day = [START + dt.timedelta(days=d) for d in range((NIGHTS[-1] - START).days + 1)]
    assert _dates(spark, cfg, C.EVENTS, C.EVENT_DATE) == every_day
    assert _dates(spark, cfg, C.SESSION_EVENTS, C.EVENT_DATE) == every_day
    assert _dates(spark, cfg, C.USER_PROPENSITY, C.SCORE_DATE) == NIGHTS
    assert _dates(spark, cfg, C.USER_PROFILE, C.PROFILE_DATE) == NIGHTS
    assert _dates(spark, cfg, C.STATE_RUNS, C.STATE_DATE) == NIGHTS  # bootstrap at the first, fold of the second
    # One ingest, sessionize and scoring run per night (no retry wrote twice), each balanced.
    ingests = tables.read(spark, cfg, C.INGEST_RUNS).filter(f"window_start >= '{NIGHTS[0]}'").collect()
    assert sorted(r["window_start"] for r in ingests) == NIGHTS
    assert all(r["rows_read"] == r["rows_written"] + r["rows_quarantined"] + r["duplicates_dropped"] for r in ingests)
    assert sorted(r["score_date"] for r in tables.read(spark, cfg, C.SCORE_RUNS).collect()) == NIGHTS
    for day in NIGHTS:
        events = tables.read(spark, cfg, C.EVENTS).filter(f"event_date = '{day}'").count()
        assert events == next(r["rows_written"] for r in ingests if r["window_start"] == day) > 0
    # The checks task ran (it is last) in each night and said so.
    checks = _task_logs(nights["home"], "checks")
    assert sorted(checks) == sorted(r["dag_run_id"] for r in nights["runs"])
    assert all("all 5 passed" in text for text in checks.values()), checks


@pytest.mark.slow
def test_the_backfill_leaves_the_same_tables_as_the_nightly_command(spark, checkout, nights, tmp_path):
    """The scheduler's backfill (both nights may run at once; the DAG's dependencies order the
    writes) against `seqlake nightly --from --to`, the same stages day after day in this process
    (which tests/test_faults.py holds equal to the separate commands)."""
    from seqlake import cli

    root, backfilled, pristine = checkout
    assert all(r["state"] == "success" for r in nights["runs"])
    one_by_one = _history_copy(pristine, tmp_path)
    sets = [x for setting in lake_settings(tmp_path) for x in ("--set", setting)]
    assert cli.main(["--conf", str(REPO / "conf" / "local.yaml"), *sets, "nightly",
                     "--from", str(NIGHTS[0]), "--to", str(NIGHTS[-1])]) == 0
    # The data tables hold no run ids or timestamps of a run: every row must be the same.
    for table in (C.EVENTS, C.SESSION_EVENTS, C.SESSIONS, C.USER_STATE, C.USER_PROPENSITY, C.USER_PROFILE):
        assertDataFrameEqual(tables.read(spark, backfilled, table), tables.read(spark, one_by_one, table))


def _versions(spark, cfg) -> dict[str, int]:
    from delta.tables import DeltaTable

    return {t: DeltaTable.forPath(spark, cfg.table_path(t)).history(1).first()["version"]
            for t in (C.EVENTS, C.SESSIONS, C.SESSION_EVENTS, C.USER_STATE, C.USER_PROPENSITY, C.USER_PROFILE)}


@pytest.mark.slow
def test_a_corrupt_landing_day_fails_the_run_before_anything_downstream_writes(spark, checkout, nights):
    root, cfg, _ = checkout
    assert all(r["state"] == "success" for r in nights["runs"])
    before = _versions(spark, cfg)
    folder = Path(cfg.landing_path("generator", CORRUPT))
    good = sum(1 for f in folder.iterdir() if f.is_file() for _ in f.open())
    # Garbage worth 20% of the day: over ingest.quarantine_threshold (5%).
    (folder / "zz-corrupt.jsonl").write_text("".join(f"{{not json {i}\n" for i in range(good // 4)))
    # The README's `airflow dags test` (Airflow stopped), given the corrupt day, with a failure
    # alert: a command of the operator's choice, given what failed.
    shown = next(c for c in readme_commands() if c.line.startswith(".venv-airflow/bin/airflow dags test "))
    command = dataclasses.replace(shown, text=re.sub(r"\d{4}-\d{2}-\d{2}", CORRUPT.isoformat(), shown.text))
    alerts = root / "alerts.txt"
    env = {**airflow_env(root),
           "SEQLAKE_ALERT_COMMAND": f'echo "$SEQLAKE_FAILED_DAG $SEQLAKE_FAILED_TASK $SEQLAKE_FAILED_DATE" >> {alerts}'}
    done = _run(command, root, env, timeout=900)
    output = done.stdout + done.stderr
    assert done.returncode != 0, output[-4000:]
    assert "DagRun failed" in output and "not retried" in output
    # Only ingest failed (a data check: no retry); what follows it never ran, so alerted nothing.
    assert alerts.read_text().splitlines() == [f"seqlake_nightly ingest {CORRUPT}"], output[-4000:]
    assert _versions(spark, cfg) == before  # events, sessions, state, scores, profiles untouched
    assert CORRUPT not in _dates(spark, cfg, C.EVENTS, C.EVENT_DATE)
    quarantined = tables.read(spark, cfg, C.EVENTS_QUARANTINE).filter(f"run_date = '{CORRUPT}'")
    garbage = quarantined.filter(quarantined.source_file.endswith("zz-corrupt.jsonl"))
    assert garbage.filter("reason = 'malformed_record'").count() == garbage.count() == good // 4
    failed = tables.read(spark, cfg, C.INGEST_RUNS).filter(f"window_start = '{CORRUPT}'").collect()
    assert [r["status"] for r in failed] == ["failed"]
    # The end-of-night checks: the last good night passes; the corrupt one names what is wrong.
    from seqlake import checks

    assert all(c.ok for c in checks.night(spark, cfg, source="generator", day=NIGHTS[-1]))
    found = {c.name: c for c in checks.night(spark, cfg, source="generator", day=CORRUPT)}
    assert not any(c.ok for c in found.values())
    assert "quarantined share" in found["ingest"].detail and "failed" in found["ingest"].detail
    # Each names the first step the corrupt day lacks: its ingest (which failed).
    mend = (f"run `seqlake ingest --source generator --date {CORRUPT}` first: source 'generator' was never "
            f"ingested for {CORRUPT}")
    assert found["sessionize"].detail == f"no sessionize run of generator covers {CORRUPT}; {mend}"
    assert found["state"].detail == f"user_state holds events up to {NIGHTS[-1]}; {mend}"


def test_weekly_gate_as_its_own_step_keeps_the_champion_unless_beaten_and_reruns_change_nothing(
        spark, checkout, tmp_path):
    """`train --no-promote` leaves a pending version and the alias alone; `promote` judges it
    against the champion on the same test split (an equal model is not better by the margin)
    and records why; judging again changes nothing."""
    from mlflow import MlflowClient

    from seqlake import tracking, train

    cfg = _history_copy(checkout[2], tmp_path)
    cfg = dataclasses.replace(cfg, mlflow=dataclasses.replace(cfg.mlflow, promotion_margin=0.5))
    tracking.setup(cfg)
    assert str(tracking.champion_version(cfg).version) == "1"
    trained = train.train(spark, cfg, source="generator", promote_now=False)
    client = MlflowClient()
    name = cfg.mlflow.registered_model
    assert trained.model_version == "2" and not trained.promoted
    assert client.get_model_version(name, "2").tags["promotion"] == "pending"
    assert str(tracking.champion_version(cfg).version) == "1"  # training alone never moves the alias
    judged = train.judge(spark, cfg, source="generator")
    # Same data, same seed: (nearly) the same metrics, which do not beat the champion's by 0.5.
    assert judged.model_version == "2" and not judged.promoted and not judged.already_judged
    assert "does not beat champion version 1" in judged.reason
    assert str(tracking.champion_version(cfg).version) == "1"
    assert client.get_model_version(name, "2").tags["promotion"] == "rejected"
    assert client.get_run(trained.run_id).data.tags["promotion.decision"] == "rejected"
    again = train.judge(spark, cfg, source="generator", version="2")
    assert again.already_judged and again.reason == judged.reason and not again.promoted
    # Without a champion to beat, the same step promotes (the gate decides, not the step).
    client.set_model_version_tag(name, "2", "promotion", "pending")
    client.delete_registered_model_alias(name, "champion")
    judged = train.judge(spark, cfg, source="generator")
    assert judged.promoted and judged.reason == "no champion yet: version 2 becomes champion"
    assert str(tracking.champion_version(cfg).version) == "2"


# --------------------------------------------------------------------------- the commands


def test_every_command_shown_is_run_or_excluded(tmp_path):
    """A new or changed command in the README or the demo's closing lines has a runner here or
    an exclusion with its reason; the parser still finds the commands it must."""
    shown = readme_commands() + demo_commands(demo_closing_lines(_checkout(tmp_path / "checkout")))
    unhandled = [(c.where, c.line) for c in shown if kind(c) is None and excluded_reason(c) is None]
    assert unhandled == []
    kinds = {kind(c) for c in shown}
    assert {"seqlake sql", "mlflow ui", "spark-sql", "make airflow"} <= kinds, shown
    assert sum(kind(c) == "seqlake sql" for c in shown) >= 2
    # Each exclusion still names something shown (a stale one would hide nothing).
    assert [p for p in EXCLUDED if not any(c.line.startswith(p) for c in shown)] == []


def _run(command: Command, cwd: Path, env: dict[str, str], stdin: str | None = None,
         timeout: int = 600) -> subprocess.CompletedProcess:
    script = "\n".join(filter(None, [command.setup, command.text]))
    return subprocess.run(["bash", "-c", script], cwd=cwd, env=env, input=stdin, capture_output=True,
                          text=True, timeout=timeout)


def _table_rows(output: str) -> int:
    """Data rows of a `seqlake sql` table (Spark's show(): a header line, then one per row)."""
    return max(0, sum(line.startswith("|") for line in output.splitlines()) - 1)


def _serve(command: Command, cwd: Path, env: dict[str, str], marker: str) -> str:
    """Start a server command as written, wait for HTTP 200 on / of its port, stop it."""
    port = int(m.group(1)) if (m := re.search(r"--port[ =](\d+)", command.line)) else MLFLOW_PORT
    assert not _listening(port), f"something already listens on {port}, where `{command.line}` serves"
    log = cwd / f"serve-{port}.log"
    server = _start(command, cwd, env, log)
    try:
        _wait(f"HTTP 200 from {command.line}", lambda: _http("GET", f"http://127.0.0.1:{port}/")[0] == 200,
              180, server, log, every_s=2)
    finally:
        _stop(server, marker)
    return log.read_text()


def run_shown_commands(root: Path) -> list[str]:
    """Each command shown, exactly as written, in the order shown (README, then the demo's
    closing lines), in the checkout ``root`` after the nights; one line per command run."""
    env = user_env()
    ran = []
    for command in readme_commands() + demo_commands(demo_closing_lines(root)):
        how, started = kind(command), time.monotonic()
        if excluded_reason(command) or how in ("make airflow", "airflow cli"):  # run by the nights' fixture
            continue
        context = f"{command.where}: {command.line}"
        if how == "seqlake sql":
            done = _run(command, root, env)
            assert done.returncode == 0, f"{context}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            assert _table_rows(done.stdout) > 0, f"{context} printed no rows:\n{done.stdout}"
        elif how == "mlflow ui":
            _serve(command, root, env, marker=str(root))
        elif how == "spark-sql":
            # An interactive shell: a user types the queries, here they come on stdin.
            done = _run(command, root, env, stdin="SHOW TABLES IN seqlake;\n"
                        f"SELECT count(*) FROM seqlake.user_propensity WHERE score_date = '{NIGHT}';\n")
            assert done.returncode == 0, f"{context}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            assert re.search(r"^user_propensity$", done.stdout, flags=re.M), f"{context}\n{done.stdout}"
            counts = re.findall(r"^(\d+)$", done.stdout, flags=re.M)
            assert counts and int(counts[-1]) > 0, f"{context}\n{done.stdout}"
        elif how == "spark-submit":
            done = _run(command, root, env)
            assert done.returncode == 0, f"{context}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        else:
            pytest.fail(f"no runner for {context}")
        ran.append(f"{time.monotonic() - started:4.0f}s  {command.where}: {command.line[:100]}")
    return ran


@pytest.mark.slow
def test_readme_and_demo_commands_run_as_written(checkout, nights):
    root, _, _ = checkout
    assert all(r["state"] == "success" for r in nights["runs"]), "the README's queries read the nights' tables"
    ran = run_shown_commands(root)
    print("\n".join(ran))
    assert len(ran) >= 6
    assert _marked(str(root)) == []  # the servers among them are stopped
