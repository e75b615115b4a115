"""``attnbench ui``: serve the MLflow UI on the store the runs went to."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Optional

import typer

from ..errors import BadInputError
from .common import TRACKING_OPTION, console, err_console, user_errors


def ui(
    port: Optional[int] = typer.Option(None, "--port", help="Port (default: ui.port in mlflow.yaml, 5000); 0 picks a free one."),
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
        port = tracking.ui.port if port is None else port
        if not 0 <= port <= 65535:
            raise BadInputError(f"--port {port}: valid: 0 (any free port) to 65535")
        if port == 0:
            port = free_port(host)
        if host not in ("127.0.0.1", "localhost", "::1"):
            err_console.print(f"[yellow]warning: --host {host} lets anyone who can reach this machine read and "
                              "change your runs: the MLflow UI has no authentication. For a shared server use "
                              "MLflow's basic-auth app (see docs/compare.md).[/yellow]", highlight=False)
        cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
               "--default-artifact-root", artifact_root(tracking), "--host", host, "--port", str(port),
               # one worker: a personal UI needs no more, and it starts in seconds on small machines
               "--workers", os.environ.get("MLFLOW_WORKERS", "1")]
        console.print(f"MLflow UI for {uri} at [bold]http://{host}:{port}[/bold] (Ctrl-C stops it)")
        raise typer.Exit(serve(cmd))


def free_port(host: str) -> int:
    """A port nobody listens on now (the OS picks it), for ``--port 0``."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def serve(cmd: list[str]) -> int:
    """Run the server in its own process group and stop the whole group (mlflow, uvicorn,
    huey workers) on Ctrl-C, SIGTERM or SIGHUP; after a requested stop, exit 0 quietly."""
    # Its own session: a Ctrl-C in the terminal reaches this process only, not each server
    # process (which would print a traceback apiece); the signal goes to the group once.
    proc = subprocess.Popen(cmd, start_new_session=True)
    stopping: list[int] = []

    def forward(signum, frame):
        stopping.append(signum)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        code = proc.wait()
        stop_group(proc.pid, grace_s=10 if stopping else 0)  # workers may outlive the leader
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if proc.poll() is None:
            stop_group(proc.pid, grace_s=0)
    if stopping:
        console.print("MLflow UI stopped")
        return 0
    return code


def stop_group(pgid: int, grace_s: float) -> None:
    """Wait up to ``grace_s`` for process group ``pgid`` to end, then SIGKILL what is left."""
    deadline = time.monotonic() + grace_s
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        if time.monotonic() >= deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            return
        time.sleep(0.1)
