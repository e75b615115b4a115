"""``attnbench ui``: serve the MLflow UI on the store the runs went to."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Optional

import typer

from ..errors import BadInputError
from .common import TRACKING_OPTION, console, user_errors


def ui(
    port: Optional[int] = typer.Option(None, "--port", help="Port (default: ui.port in mlflow.yaml, 5000)."),
    host: Optional[str] = typer.Option(None, "--host", help="Interface (default: ui.host in mlflow.yaml, 127.0.0.1)."),
    tracking_uri: Optional[str] = TRACKING_OPTION,
):
    """Serve the MLflow UI on the store the runs went to."""
    from ..run.tracking import artifact_root, load_tracking_config, resolve_tracking_uri

    with user_errors():
        tracking = load_tracking_config()
        uri = resolve_tracking_uri(tracking_uri, tracking)
        if uri.startswith(("http://", "https://")):
            raise BadInputError(f"tracking URI {uri} is already a server: open it in a browser instead")
        host = host or tracking.ui.host
        port = port or tracking.ui.port
        cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
               "--default-artifact-root", artifact_root(tracking), "--host", host, "--port", str(port),
               # one worker: a personal UI needs no more, and it starts in seconds on small machines
               "--workers", os.environ.get("MLFLOW_WORKERS", "1")]
        console.print(f"MLflow UI for {uri} at [bold]http://{host}:{port}[/bold] (Ctrl-C stops it)")
        try:
            code = subprocess.call(cmd)
        except KeyboardInterrupt:
            code = 0
        raise typer.Exit(code)
