"""Every path the README and the demo's closing lines tell a user to take, taken as written.

The commands are read from README.md and from what `make demo` prints at its end at test time,
so a changed line is tested in its new form, and a new command fails
``test_every_command_shown_is_run_or_excluded`` until it is run here or excluded with a reason.

They run in a stand-in checkout: a temporary folder holding symlinks to the repository's files
(Makefile, .venv, .venv-airflow, conf, jobs ...) and a small generated lake as ``lake/``, laid
out as `make demo` leaves it. The commands resolve ``lake/``, ``conf/local.yaml`` and ``$PWD``
against the working directory, so running them there points them at the test lake without
editing them; the environment is the caller's with the virtual environments taken off PATH (a
new shell after `make demo`). One Airflow start (`make airflow`, as the demo's last lines say),
one night run through Airflow's REST API, then the README's commands on the lake it left.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from seqlake import constants as C
from seqlake import tables

from conftest import REPO, TEST_JVM_OPTS, TEST_SETTINGS, make_config
from test_airflow import AIRFLOW_VENV, SMALL, build_history

# The demo's 28 days, 600 users; days before NIGHT ingested and sessionized in-process, NIGHT is
# the one Airflow runs (the demo's last day, which the README's examples name). Some dirty
# records, so that the README's quarantine query has rows to show.
NIGHT = dt.date(2024, 1, 28)
LAKE = (*SMALL, "generator.days=28", "generator.dirty_rate=0.01")
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
    ".venv-airflow/bin/airflow dags test": "a whole night in-process (minutes); tests/test_airflow.py runs "
                                           "`airflow dags test seqlake_nightly` for real",
    "make cluster-up": "the loopback cluster (a minute, five servers): tests/test_cluster.py starts it the same way",
    'eval "$(.venv/bin/python -m seqlake.localcluster env)"': "the cluster's keys: tests/test_cluster.py passes "
                                                               "them the same way",
    ".venv/bin/seqlake --conf conf/cluster.local.yaml": "tests/test_cluster.py runs these on its cluster",
    "make cluster-down": "tests/test_cluster.py stops its cluster the same way",
    ".venv-airflow/bin/airflow backfill create": "the night above ran its day already, so a backfill of it has "
                                                 "nothing to create (exit 1), and each more day costs minutes; "
                                                 "tests/test_airflow.py runs a scheduler-run backfill for real",
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
    parentheses ("Lake tables" gives paths, checked by the night's test)."""
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
        assert time.monotonic() < deadline, f"no {what} after {timeout_s:.0f}s:\n{log.read_text()[-6000:]}"
        time.sleep(every_s)


# --------------------------------------------------------------------------- the lake


@pytest.fixture(scope="module")
def checkout(spark, tmp_path_factory):
    """(stand-in checkout, config): a lake as `make demo` lays it out (tables and landing files
    under ``lake/``), days before NIGHT ingested and sessionized, a vocabulary, a labelled
    snapshot and a champion; NIGHT waits in the landing folder."""
    started = time.monotonic()
    root = _checkout(tmp_path_factory.mktemp("readme") / "checkout")
    cfg = make_config(root, *LAKE, f"lake.landing_root={root / 'lake'}")
    build_history(spark, cfg, NIGHT - dt.timedelta(days=1))
    print(f"lake: {time.monotonic() - started:.0f}s")
    return root, cfg


# --------------------------------------------------------------------------- make airflow


@pytest.fixture(scope="module")
def night(checkout):
    """`make airflow` as the demo's closing line gives it, in the checkout; NIGHT's run of
    seqlake_nightly triggered and watched through the REST API; then everything stopped."""
    root, _ = checkout
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
    out: dict = {"log": log}
    try:
        def healthy():
            status, body = _http("GET", f"{API}/api/v2/monitor/health")
            parts = ("metadatabase", "scheduler", "triggerer", "dag_processor")
            return status == 200 and all((body.get(p) or {}).get("status") == "healthy" for p in parts) and body

        out["health"] = _wait("healthy Airflow", healthy, 300, server, log)
        out["up_s"] = time.monotonic() - started
        # The README: log in as admin with the password kept in .airflow/.
        passwords = json.loads((home / "simple_auth_manager_passwords.json.generated").read_text())
        status, body = _http("POST", f"{API}/auth/token", body={"username": "admin", "password": passwords["admin"]})
        assert status == 201, (status, body)
        token = body["access_token"]
        _wait("seqlake_nightly in the API", lambda: _http("GET", f"{API}/api/v2/dags/seqlake_nightly", token)[0] == 200,
              180, server, log)
        # Triggered while paused, then unpaused: unpausing also queues the scheduled run of the
        # latest interval (yesterday's, its sensor waits for files that never come), and with
        # max_active_runs=1 whichever run starts first holds the DAG. The scheduler starts queued
        # runs in run_after order, so NIGHT's run gets the run_after its scheduled run would
        # have had (the end of its day) and starts first. ds is the logical date: NIGHT.
        midnight = dt.datetime.combine(NIGHT, dt.time(), tzinfo=dt.timezone.utc)
        status, run = _http("POST", f"{API}/api/v2/dags/seqlake_nightly/dagRuns", token,
                            {"logical_date": midnight.isoformat(),
                             "run_after": (midnight + dt.timedelta(days=1)).isoformat()})
        assert status == 200, (status, run)
        out["run"] = run
        status, body = _http("PATCH", f"{API}/api/v2/dags/seqlake_nightly", token, {"is_paused": False})
        assert status == 200 and body["is_paused"] is False, (status, body)
        run_url = f"{API}/api/v2/dags/seqlake_nightly/dagRuns/{run['dag_run_id']}"

        def finished():
            status, body = _http("GET", run_url, token)
            return status == 200 and body["state"] in ("success", "failed") and body

        out["finished"] = _wait("end of NIGHT's run", finished, 1500, server, log, every_s=10)
        out["run_s"] = time.monotonic() - started - out["up_s"]
        out["tasks"] = {t["task_id"]: t["state"] for t in _http("GET", f"{run_url}/taskInstances", token)[1]
                        ["task_instances"]}
        out["runs"] = [(r["dag_run_id"], r["state"]) for r in
                       _http("GET", f"{API}/api/v2/dags/seqlake_nightly/dagRuns", token)[1]["dag_runs"]]
    finally:
        out["killed"] = _stop(server, str(root))
        out["left"] = _marked(str(root))
        deadline = time.monotonic() + 30
        while _listening(8080) and time.monotonic() < deadline:
            time.sleep(1)
        out["listening"] = _listening(8080)
    print(f"make airflow: healthy after {out['up_s']:.0f}s, {NIGHT} run {out['finished']['state']} after "
          f"{out['run_s']:.0f}s; tasks {out['tasks']}; runs {out['runs']}; {len(out['killed'])} killed after SIGTERM")
    return out


@pytest.mark.slow
def test_make_airflow_runs_a_night_triggered_through_the_rest_api_and_stops_cleanly(spark, checkout, night):
    root, cfg = checkout
    run, finished = night["run"], night["finished"]
    assert run["logical_date"].startswith(NIGHT.isoformat())
    assert finished["state"] == "success", f"{night['tasks']}\n{night['log'].read_text()[-6000:]}"
    assert set(night["tasks"].values()) == {"success"} and len(night["tasks"]) == 8, night["tasks"]
    # The run wrote NIGHT: its events, sessions, scores and profiles are in the lake.
    for table, column in ((C.EVENTS, C.EVENT_DATE), (C.SESSION_EVENTS, C.EVENT_DATE),
                          (C.USER_PROPENSITY, C.SCORE_DATE), (C.USER_PROFILE, C.PROFILE_DATE)):
        assert tables.read(spark, cfg, table).filter(f"{column} = '{NIGHT}'").count() > 0, table
    assert [r["score_date"] for r in tables.read(spark, cfg, C.SCORE_RUNS).collect()] == [NIGHT]
    # Every table the demo's closing line lists is a Delta table at the path it prints.
    closing = demo_closing_lines(root)["Lake tables (Delta)"]
    folder, names = re.fullmatch(r"(.*)/\{(.*)\}", closing).groups()
    assert Path(folder) == root / "lake"
    assert [n for n in names.split(",") if not (Path(folder) / n / "_delta_log").is_dir()] == []
    # Stopped: nothing it started is left, nothing listens on 8080.
    assert night["left"] == [] and not night["listening"], night


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
    closing lines), in the checkout ``root`` after the night; one line per command run."""
    env = user_env()
    ran = []
    for command in readme_commands() + demo_commands(demo_closing_lines(root)):
        how, started = kind(command), time.monotonic()
        if excluded_reason(command) or how == "make airflow":  # make airflow: the night's fixture
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
        elif how == "airflow cli":
            # With Airflow stopped, in the home the night's `make airflow` used: the command
            # changes what it records there.
            done = _run(command, root, airflow_env(root))
            assert done.returncode == 0, f"{context}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        else:
            pytest.fail(f"no runner for {context}")
        ran.append(f"{time.monotonic() - started:4.0f}s  {command.where}: {command.line[:100]}")
    return ran


@pytest.mark.slow
def test_readme_and_demo_commands_run_as_written(checkout, night):
    root, _ = checkout
    assert night["finished"]["state"] == "success", "the README's queries read the night's tables"
    ran = run_shown_commands(root)
    print("\n".join(ran))
    assert len(ran) >= 6
    assert _marked(str(root)) == []  # the servers among them are stopped
