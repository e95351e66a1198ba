"""MLflow: tracking and registry set-up from config, parameters, and the promotion gate.

Embedded default: sqlite under ``<lake.root>/_mlflow`` with local artifacts; a server URI by
configuration (``mlflow.tracking_uri``, ``mlflow.artifact_root``). The experiment's artifact
location is set explicitly (STACK.md). Aliases, not stages: ``champion`` marks the model
version scoring uses.
"""
from __future__ import annotations

import dataclasses
import importlib.metadata
from pathlib import Path
from typing import Any

from seqlake.config import Config

CHAMPION = "champion"


def setup(cfg: Config) -> str:
    """Point MLflow at the configured store; the training experiment's id (created if missing)."""
    return setup_experiment(cfg, cfg.mlflow.experiment)


def setup_experiment(cfg: Config, name: str) -> str:
    """Point MLflow at the configured store; the id of experiment ``name`` (created if missing)."""
    import mlflow
    from mlflow import MlflowClient

    uri = cfg.mlflow_tracking_uri()
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient()
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(name, artifact_location=cfg.mlflow_artifact_root())


def flat_params(cfg: Config) -> dict[str, str]:
    """Every setting as ``section.key`` -> string (lists comma-joined): the run's parameters."""
    out: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}{k}.", v)
        elif isinstance(value, (list, tuple)):
            out[prefix.rstrip(".")] = ",".join(map(str, value))
        else:
            out[prefix.rstrip(".")] = str(value)

    walk("", dataclasses.asdict(cfg))
    return out


def pip_requirements() -> list[str]:
    """What the logged model needs, pinned to this environment (not inferred: MLflow's
    inference lists both tensorflow-cpu and tensorflow)."""
    names = []
    for name in ("tensorflow-cpu", "tensorflow"):
        try:
            names.append(f"{name}=={importlib.metadata.version(name)}")
            break
        except importlib.metadata.PackageNotFoundError:
            continue
    for name in ("keras", "numpy", "pandas", "mlflow"):
        names.append(f"{name}=={importlib.metadata.version(name)}")
    return names


def champion_version(cfg: Config):
    """The registered model version holding the ``champion`` alias, or None."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    try:
        return client.get_model_version_by_alias(cfg.mlflow.registered_model, CHAMPION)
    except MlflowException:
        return None
