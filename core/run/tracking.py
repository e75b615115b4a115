"""Where runs are tracked: ``mlflow.yaml``, the tracking-URI precedence and experiment setup."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import yaml
from pydantic import BaseModel, ConfigDict, Field

from ..errors import BadInputError
from ..options import OptionsError, parse_options

CONFIG_FILE = "mlflow.yaml"


class UIConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    host: str = "127.0.0.1"
    port: int = Field(5000, ge=1, le=65535)


class TrackingConfig(BaseModel):
    """The contents of ``mlflow.yaml`` (all fields optional)."""

    model_config = ConfigDict(extra="forbid")
    tracking_uri: str = "sqlite:///mlflow.db"
    artifact_location: str = "./mlartifacts"
    ui: UIConfig = Field(default_factory=UIConfig)


def load_tracking_config(path: str | Path | None = None) -> TrackingConfig:
    """Read ``mlflow.yaml`` from ``path`` or the working directory; defaults when absent."""
    file = Path(path) if path else Path.cwd() / CONFIG_FILE
    if not file.exists():
        if path:
            raise BadInputError(f"{file}: no such file")
        return TrackingConfig()
    try:
        raw = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as exc:
        raise BadInputError(f"{file}: malformed YAML: {exc}") from None
    try:
        return parse_options(TrackingConfig, raw)
    except OptionsError as exc:
        raise OptionsError(exc.problems, source=str(file)) from None


def resolve_tracking_uri(flag: str | None = None, config: TrackingConfig | None = None) -> str:
    """``--tracking-uri`` flag, then ``MLFLOW_TRACKING_URI``, then mlflow.yaml (absolutised)."""
    uri = flag or os.environ.get("MLFLOW_TRACKING_URI") or (config or load_tracking_config()).tracking_uri
    return absolutize_uri(uri)


def absolutize_uri(uri: str) -> str:
    """Make a relative sqlite/file URI absolute, so a server started elsewhere sees the same store."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        rel = uri[len("sqlite:///"):]
        if rel and rel != ":memory:":
            return "sqlite:///" + str(Path(rel).resolve())
    if "://" not in uri:  # a bare path means a file store
        return Path(uri).resolve().as_uri()
    return uri


def artifact_root(config: TrackingConfig | None = None) -> str:
    loc = (config or load_tracking_config()).artifact_location
    return loc if "://" in loc else Path(loc).resolve().as_uri()


def check_writable(uri: str, what: str = "tracking location",
                   fix: str = "--tracking-uri, $MLFLOW_TRACKING_URI or tracking_uri in mlflow.yaml") -> None:
    """Fail early, before training anything, when a local store cannot be written."""
    local: Path | None = None
    if uri.startswith("sqlite:///"):
        local = Path(uri[len("sqlite:///"):])
    elif uri.startswith("file:"):
        local = Path(urlparse(uri).path)
    if local is None:
        return
    # The nearest existing ancestor must be a writable directory (or the file itself writable).
    target = local
    while not target.exists() and target != target.parent:
        target = target.parent
    blocked = (target != local and not target.is_dir()) or not os.access(target, os.W_OK)
    if blocked:
        reason = f"{target} is not a directory" if not target.is_dir() and target != local else f"{target} denies writing"
        raise BadInputError(f"{what} {uri} is not writable ({reason}); choose another with {fix}")


def check_artifact_root_writable(root: str) -> None:
    if root.startswith("file:"):
        check_writable(root, "artifact location", "artifact_location in mlflow.yaml")


def get_or_create_experiment(client, name: str, artifact_root_uri: str) -> str:
    """Experiment id by name; new experiments keep artifacts under ``<artifact root>/<name>``."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            client.restore_experiment(found.experiment_id)
        return found.experiment_id
    return client.create_experiment(name, artifact_location=f"{artifact_root_uri.rstrip('/')}/{name}")
