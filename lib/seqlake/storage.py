"""Lake paths outside Spark: pyarrow file systems for local paths and object-store URIs.

Spark reaches the object store through Hadoop's S3A (``spark.hadoop.fs.s3a.*``). The few places
that touch lake files without Spark (the generator's upload, the landing sensor, Parquet footers)
use pyarrow, which knows ``s3://`` but not ``s3a://``: the URI is mapped to ``s3://`` and the
endpoint, region and path-style access come from the same Hadoop settings, so one configuration
serves both. Credentials are never read from configuration: pyarrow's default AWS chain takes
them from the environment (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``), as Spark's
``EnvironmentVariableCredentialsProvider`` does.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping
from urllib.parse import urlparse

_URI = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_HADOOP_PREFIX = "spark.hadoop."


def hadoop_conf(cfg) -> dict[str, str]:
    """The Hadoop settings (``fs.s3a.*`` ...) of a ``Config``'s ``spark.conf``, prefix removed."""
    return {k[len(_HADOOP_PREFIX):]: v for k, v in cfg.spark.conf.items() if k.startswith(_HADOOP_PREFIX)}


def hadoop_conf_of(spark) -> dict[str, str]:
    """The ``fs.s3a.*`` settings of a running SparkSession's Hadoop configuration."""
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    keys = ("fs.s3a.endpoint", "fs.s3a.endpoint.region", "fs.s3a.path.style.access", "fs.s3a.connection.ssl.enabled")
    return {k: conf.get(k) for k in keys if conf.get(k) is not None}


def arrow_filesystem(uri: str, conf: Mapping[str, str] | None = None):
    """(pyarrow FileSystem, path) for a local path, ``file:`` URI, or ``s3a://``/``s3://`` URI
    (endpoint and region from the Hadoop settings ``conf``); other URIs as pyarrow reads them."""
    from pyarrow import fs

    if not _URI.match(uri):
        return fs.LocalFileSystem(), uri.removeprefix("file:") if uri.startswith("file:/") else uri
    parsed = urlparse(uri)
    if parsed.scheme in ("s3a", "s3", "s3n"):
        conf = conf or {}
        options: dict = {}
        endpoint = conf.get("fs.s3a.endpoint", "")
        if endpoint:
            scheme = urlparse(endpoint).scheme if "://" in endpoint else (
                "https" if conf.get("fs.s3a.connection.ssl.enabled", "true").lower() == "true" else "http")
            options["endpoint_override"] = endpoint.split("://", 1)[-1].rstrip("/")
            options["scheme"] = scheme
        region = conf.get("fs.s3a.endpoint.region") or conf.get("fs.s3a.region")
        if region:
            options["region"] = region
        # pyarrow addresses buckets path-style whenever an endpoint is overridden (no
        # force_virtual_addressing), which is what fs.s3a.path.style.access asks for.
        return fs.S3FileSystem(**options), f"{parsed.netloc}{parsed.path}".rstrip("/")
    return fs.FileSystem.from_uri(uri)


def is_local(uri: str) -> bool:
    return not _URI.match(uri) or uri.startswith("file:")


def publish_tree(local_root: str | Path, uri: str, conf: Mapping[str, str] | None = None,
                 replace: str = r"part-\d+-\d+\.jsonl") -> int:
    """Copy the files under ``local_root`` to the same relative paths under ``uri``. In every
    folder that receives files, remote files whose names match ``replace`` are deleted first (a
    rerun with fewer part files must not leave stale ones). Returns the number of files copied."""
    from pyarrow import fs

    target, base = arrow_filesystem(uri, conf)
    local = fs.LocalFileSystem()
    root = Path(local_root)
    pattern = re.compile(replace)
    copied = 0
    folders: dict[Path, list[Path]] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        folders.setdefault(path.parent.relative_to(root), []).append(path)
    for folder, files in folders.items():
        remote_folder = "/".join(x for x in (base, folder.as_posix()) if x and x != ".")
        existing = target.get_file_info(fs.FileSelector(remote_folder, allow_not_found=True, recursive=False))
        for info in existing:
            if info.type == fs.FileType.File and pattern.fullmatch(info.base_name):
                target.delete_file(info.path)
        for path in files:
            fs.copy_files(str(path), f"{remote_folder}/{path.name}", source_filesystem=local,
                          destination_filesystem=target)
            copied += 1
    return copied
