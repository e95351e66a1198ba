"""The one place a SparkSession is built from configuration."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from urllib.parse import urlparse

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
    if jars:
        builder = builder.config("spark.jars", ",".join(jars))
    else:  # resolved by Spark's Ivy, which reports every resolution on the console
        builder = builder.config("spark.jars.packages", cfg.spark.delta_package)
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
            os.environ.setdefault("SPARK_SUBMIT_OPTS", f"-Dderby.system.home={catalog_dir}")
    else:
        builder = builder.config("spark.sql.catalogImplementation", "in-memory")
    for key, value in cfg.spark.conf.items():
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
    args += ["--packages", cfg.spark.delta_package]
    return args


def _jars_folder(package: str) -> Path:
    return Path(sys.prefix) / "share" / "seqlake" / "jars" / package.replace(":", "_")


def local_jars(package: str) -> list[str]:
    """The jars of the Maven ``package`` (its dependencies included) that ``fetch_jars`` put into
    this environment, or [] when it has not run."""
    folder = _jars_folder(package)
    return sorted(str(p) for p in folder.glob("*.jar")) if (folder / "COMPLETE").exists() else []


def fetch_jars(package: str) -> list[str]:
    """Resolve ``package`` once with Spark's own resolver and keep its jars in this environment,
    so that later sessions neither resolve again nor print Ivy's report. Returns the jars."""
    if local_jars(package):
        return local_jars(package)
    spark = (SparkSession.builder.master("local[1]").appName("seqlake-fetch-jars")
             .config("spark.jars.packages", package).config("spark.ui.enabled", "false").getOrCreate())
    try:
        resolved = [urlparse(url).path for url in spark.sparkContext.getConf().get("spark.jars").split(",") if url]
    finally:
        spark.stop()
    folder = _jars_folder(package)
    folder.mkdir(parents=True, exist_ok=True)
    for jar in resolved:
        shutil.copy2(jar, folder)
    (folder / "COMPLETE").write_text("\n".join(Path(j).name for j in resolved) + "\n")
    return local_jars(package)


if __name__ == "__main__":  # `python -m seqlake.spark`: what `make setup` runs
    from seqlake.config import load_config

    for jar in fetch_jars(load_config(None, []).spark.delta_package):
        print(jar)
