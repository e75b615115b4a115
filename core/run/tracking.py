"""Where runs are tracked: ``mlflow.yaml``, the tracking-URI precedence, store checks and
experiment setup."""

from __future__ import annotations

import contextlib
import os
import sqlite3
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


def artifact_root(config: TrackingConfig | None = None, tracking_uri: str | None = None) -> str | None:
    """Where new experiments keep artifacts. ``None`` for a tracking server when mlflow.yaml does
    not set ``artifact_location``: the server's own (served) artifact root is then used, so runs
    from several machines land in one place."""
    config = config or load_tracking_config()
    if _scheme(tracking_uri or "") in ("http", "https") and "artifact_location" not in config.model_fields_set:
        return None
    loc = config.artifact_location
    return loc if "://" in loc else Path(loc).resolve().as_uri()


# ---------------------------------------------------------------- store checks and first use

DATABASE_SCHEMES = ("postgresql", "mysql", "mssql")
SUPPORTED_SCHEMES = ("sqlite", "file", "http", "https", *DATABASE_SCHEMES, "databricks")
REACH_TIMEOUT_S = 5.0  # to connect; a server that accepted the connection may take longer to answer
ANSWER_TIMEOUT_S = 60.0  # a fresh server's first request sets up its store
SERVER_HINT = ("start one with `mlflow server --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000` "
               "(docs/scale.md shows a team server), or pass another --tracking-uri")


def _scheme(uri: str) -> str:
    """``postgresql+psycopg://...`` -> ``postgresql``; a bare path -> ``""``."""
    return uri.split("://", 1)[0].split("+", 1)[0].lower() if "://" in uri else ""


def check_store(uri: str, timeout_s: float = REACH_TIMEOUT_S) -> None:
    """Fail fast (BadInputError, exit 2) before any work: an unsupported scheme, a server that does
    not answer within ``timeout_s``, a local store that cannot be written or is not a database."""
    scheme = _scheme(uri)
    if scheme not in SUPPORTED_SCHEMES:
        raise BadInputError(f"tracking URI {uri}: unsupported scheme {scheme or '(none)'!r}; valid: "
                            f"{', '.join(SUPPORTED_SCHEMES)} (e.g. sqlite:///mlflow.db or http://127.0.0.1:5000)")
    if scheme in ("http", "https"):
        _check_server(uri, timeout_s)
    elif scheme in ("sqlite", "file"):
        check_writable(uri)
        if scheme == "sqlite":
            _check_sqlite_file(uri)


def _check_server(uri: str, timeout_s: float) -> None:
    import requests

    url = uri.rstrip("/") + "/api/2.0/mlflow/experiments/search"
    try:
        response = requests.post(url, json={"max_results": 1}, timeout=(timeout_s, ANSWER_TIMEOUT_S))
    except requests.RequestException as exc:
        reason = type(exc).__name__ if not isinstance(exc, requests.ConnectionError) else "connection refused or host unreachable"
        if isinstance(exc, requests.ConnectTimeout):
            reason = f"no connection within {timeout_s:.0f} s"
        elif isinstance(exc, requests.Timeout):
            reason = f"connected, but no answer within {ANSWER_TIMEOUT_S:.0f} s"
        raise BadInputError(f"tracking server {uri} is not reachable ({reason}); {SERVER_HINT}") from None
    if response.status_code != 200:
        raise BadInputError(f"tracking URI {uri} does not answer like an MLflow tracking server "
                            f"(HTTP {response.status_code} from {url}); {SERVER_HINT}")


def _check_sqlite_file(uri: str) -> None:
    path = Path(uri[len("sqlite:///"):])
    if not path.is_file() or path.stat().st_size == 0:
        return  # created on first use
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=REACH_TIMEOUT_S)) as db:
            db.execute("PRAGMA schema_version").fetchone()
    except sqlite3.DatabaseError as exc:
        raise BadInputError(f"tracking store {path} is not a SQLite database ({exc}); point --tracking-uri at "
                            "another file (a new one is created) or at a tracking server") from None


@contextlib.contextmanager
def store_lock(uri: str):
    """Serialise the first use of a SQLite store: MLflow creates and migrates its schema on first
    open, and two processes doing that at once crash (``duplicate column name``) or leave
    ``_alembic_tmp_*`` tables. The lock file sits beside the database. Other stores: no lock."""
    if _scheme(uri) != "sqlite":
        yield
        return
    from filelock import FileLock, Timeout

    lock_path = uri[len("sqlite:///"):] + ".lock"
    try:
        with FileLock(lock_path, timeout=300):
            yield
    except Timeout:
        raise BadInputError(f"tracking store {uri}: another process holds {lock_path} for over 5 minutes; "
                            "if none is running, delete that file") from None


def open_client(uri: str, *, ready: bool = False):
    """An MlflowClient on ``uri`` whose store exists and is migrated (first use under the lock).

    ``ready``: another process of this invocation already opened the store (the grid's workers),
    so there is nothing to create or migrate and no lock to queue for: N workers starting at
    once would otherwise open the store one after another, seconds each."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    with contextlib.nullcontext() if ready else store_lock(uri):
        try:
            client = MlflowClient(uri)  # opening the store may create and migrate it
            client.search_experiments(max_results=1)
        except MlflowException as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BadInputError(f"tracking store {uri} cannot be used: {first}") from None
    return client


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


def check_artifact_root_writable(root: str | None) -> None:
    if root and root.startswith("file:"):
        check_writable(root, "artifact location", "artifact_location in mlflow.yaml")


def get_or_create_experiment(client, name: str, artifact_root_uri: str | None) -> str:
    """Experiment id by name; new experiments keep artifacts under ``<artifact root>/<name>``
    (or where the tracking server puts them when ``artifact_root_uri`` is None). Safe when two
    invocations create the same experiment at once: the loser reads the winner's."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            client.restore_experiment(found.experiment_id)
        return found.experiment_id
    location = f"{artifact_root_uri.rstrip('/')}/{name}" if artifact_root_uri else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id
