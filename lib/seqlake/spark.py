"""The one place a SparkSession is built from configuration."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence

from pyspark.sql import SparkSession

from seqlake.config import Config, join_path

_DELTA_CONF = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}


def build_spark(cfg: Config) -> SparkSession:
    """Build (or return the running) SparkSession for ``cfg``: master, Delta, catalog, extra conf.

    Timestamps are UTC everywhere (session time zone), so a day means a UTC day. The Delta JVM
    package comes from ``spark.jars`` when set, else from the jars ``make setup`` fetched into
    this environment (``fetch_jars``), else Spark resolves it from Maven Central.
    """
    # Executors must run this interpreter (the project's venv), also under spark-submit.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = SparkSession.builder
    # Under spark-submit (which starts the JVM and tells Python its gateway port) the launcher's
    # --master decides, e.g. Airflow's Spark connection; spark.master serves the seqlake CLI.
    if not os.environ.get("PYSPARK_GATEWAY_PORT"):
        builder = builder.master(cfg.spark.master)
    builder = (
        builder.appName(cfg.spark.app_name)
        .config("spark.sql.shuffle.partitions", str(cfg.spark.shuffle_partitions))
        .config("spark.driver.memory", cfg.spark.driver_memory)
        .config("spark.sql.session.timeZone", "UTC")
        # Delta's replaceWhere on data columns is what makes per-date writes idempotent.
        .config("spark.databricks.delta.replaceWhere.dataColumns.enabled", "true")
    )
    for key, value in _DELTA_CONF.items():
        builder = builder.config(key, value)
    jars = list(cfg.spark.jars) or local_jars(cfg.spark.delta_package)
    packages = [] if jars else [cfg.spark.delta_package]
    if cfg.spark.packages:
        # Fetched on first use when `make setup` did not: the driver's own class path must name
        # them (below), which jars resolved at JVM start cannot be.
        extra = local_jars(cfg.spark.packages, cfg.spark.packages_exclude) or fetch_jars(
            cfg.spark.packages, cfg.spark.packages_exclude)
        jars += extra
        # Also on the driver's class path, not only in spark.jars' class loader: JDBC's
        # DriverManager (the Hive metastore's PostgreSQL driver) only sees drivers there.
        # Read when the driver JVM starts, i.e. by the seqlake CLI, not under spark-submit.
        classpath = [cfg.spark.conf.get("spark.driver.extraClassPath", ""), *extra]
        builder = builder.config("spark.driver.extraClassPath", os.pathsep.join(p for p in classpath if p))
    if jars:
        builder = builder.config("spark.jars", ",".join(jars))
    if packages:  # resolved by Spark's Ivy, which reports every resolution on the console
        builder = builder.config("spark.jars.packages", ",".join(packages))
        if cfg.spark.packages_exclude:
            builder = builder.config("spark.jars.excludes", ",".join(cfg.spark.packages_exclude))
    if cfg.lake.catalog == "hive":
        builder = builder.enableHiveSupport()
        if not _is_uri(cfg.lake.root):
            # Embedded Derby metastore under the lake, so spark-sql with the same settings
            # sees the same tables. On a cluster, point spark.conf at a shared metastore.
            catalog_dir = join_path(cfg.lake.root, "_catalog")
            builder = builder.config(
                "spark.hadoop.javax.jdo.option.ConnectionURL",
                f"jdbc:derby:;databaseName={catalog_dir}/metastore_db;create=true",
            ).config("spark.sql.warehouse.dir", f"{catalog_dir}/warehouse")
            # derby.log beside it, also where SPARK_SUBMIT_OPTS already holds other JVM options.
            opts = os.environ.get("SPARK_SUBMIT_OPTS", "")
            if "-Dderby.system.home=" not in opts:
                os.environ["SPARK_SUBMIT_OPTS"] = f"{opts} -Dderby.system.home={catalog_dir}".strip()
    else:
        builder = builder.config("spark.sql.catalogImplementation", "in-memory")
    for key, value in cfg.spark.conf.items():
        if key == "spark.driver.extraClassPath" and cfg.spark.packages:
            continue  # merged with the packages' jars above
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(cfg.spark.log_level)
    return spark


def _is_uri(path: str) -> bool:
    return "://" in path


def spark_submit_conf(cfg: Config) -> list[str]:
    """``--conf`` arguments equivalent to ``build_spark`` for spark-sql / spark-submit users."""
    args: list[str] = []
    for key, value in {**_DELTA_CONF, "spark.sql.session.timeZone": "UTC", **cfg.spark.conf}.items():
        args += ["--conf", f"{key}={value}"]
    args += ["--packages", ",".join([cfg.spark.delta_package, *cfg.spark.packages])]
    if cfg.spark.packages_exclude:
        args += ["--exclude-packages", ",".join(cfg.spark.packages_exclude)]
    return args


def _packages(packages: str | Sequence[str]) -> list[str]:
    return [packages] if isinstance(packages, str) else list(packages)


def _jars_folder(packages: str | Sequence[str], excludes: Sequence[str] = ()) -> Path:
    names = "+".join(p.replace(":", "_") for p in _packages(packages))
    if excludes:  # another exclusion list is another set of jars
        names += "-x" + hashlib.sha1(",".join(sorted(excludes)).encode()).hexdigest()[:10]
    return Path(sys.prefix) / "share" / "seqlake" / "jars" / names


def local_jars(packages: str | Sequence[str], excludes: Sequence[str] = ()) -> list[str]:
    """The jars of the Maven ``packages`` (their dependencies included, less ``excludes``) that
    ``fetch_jars`` put into this environment, or [] when it has not run."""
    folder = _jars_folder(packages, excludes)
    return sorted(str(p) for p in folder.glob("*.jar")) if (folder / "COMPLETE").exists() else []


_RESOLVE = """
import json, sys
from urllib.parse import urlparse
from pyspark.sql import SparkSession
packages, excludes, result = sys.argv[1:4]
builder = (SparkSession.builder.master("local[1]").appName("seqlake-fetch-jars")
           .config("spark.jars.packages", packages).config("spark.ui.enabled", "false"))
if excludes:
    builder = builder.config("spark.jars.excludes", excludes)
spark = builder.getOrCreate()
try:
    jars = [urlparse(u).path for u in spark.sparkContext.getConf().get("spark.jars").split(",") if u]
finally:
    spark.stop()
open(result, "w").write(json.dumps(jars))
"""


def fetch_jars(packages: str | Sequence[str], excludes: Sequence[str] = ()) -> list[str]:
    """Resolve ``packages`` (less the groupId:artifactId patterns ``excludes``) once with Spark's
    own resolver and keep their jars in this environment, so that later sessions neither resolve
    again nor print Ivy's report. Returns the jars."""
    if local_jars(packages, excludes):
        return local_jars(packages, excludes)
    # Spark resolves spark.jars.packages only when its JVM starts: a JVM (and Python) of its own
    # for each resolution, so that several can run from one process.
    with tempfile.TemporaryDirectory(prefix="seqlake-fetch-jars-") as scratch:
        result = Path(scratch) / "jars.json"
        subprocess.run([sys.executable, "-c", _RESOLVE, ",".join(_packages(packages)), ",".join(excludes),
                        str(result)], check=True)
        resolved = json.loads(result.read_text())
    folder = _jars_folder(packages, excludes)
    folder.mkdir(parents=True, exist_ok=True)
    for jar in resolved:
        shutil.copy2(jar, folder)
    (folder / "COMPLETE").write_text("\n".join(Path(j).name for j in resolved) + "\n")
    return local_jars(packages, excludes)


def fetch_config_jars(cfg: Config) -> list[str]:
    """Every jar a configuration asks for: its Delta package and its further ``spark.packages``."""
    jars = list(cfg.spark.jars) or fetch_jars(cfg.spark.delta_package)
    if cfg.spark.packages:
        jars += fetch_jars(cfg.spark.packages, cfg.spark.packages_exclude)
    return jars


if __name__ == "__main__":  # `python -m seqlake.spark [CONF ...]`: what `make setup` runs
    from seqlake.config import load_config

    for path in sys.argv[1:] or [None]:
        for jar in fetch_config_jars(load_config(path, [])):
            print(jar)
