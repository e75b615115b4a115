"""``attnbench plugins``: what is registered, by which plugin, and what failed to load."""

from __future__ import annotations

import json
from typing import List, Optional

import typer
from rich.table import Table

from .common import PLUGIN_OPTION, console, user_errors


def plugins(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
    plugin: Optional[List[str]] = PLUGIN_OPTION,
):
    """List registered attention variants, model families and tasks, and plugins that failed."""
    from ..plugin_host import get_host

    with user_errors():
        host = get_host(plugin or [])
        if as_json:
            typer.echo(json.dumps(host.as_dict(), indent=2))
            return
        for kind, title in (("attention", "attention variants"), ("model", "model families"), ("task", "tasks")):
            table = Table(title=title, title_justify="left")
            table.add_column("name", style="bold", overflow="fold")
            table.add_column("registered by", overflow="fold")
            table.add_column("details", overflow="fold")
            for reg in sorted(host.registry(kind), key=lambda r: r.name):
                table.add_row(reg.name, reg.plugin, _details(kind, reg.factory))
            console.print(table)
        if host.failures:
            table = Table(title="plugins that failed to load", title_justify="left", style="red")
            for col in ("plugin", "stage", "error"):
                table.add_column(col, overflow="fold")
            for f in host.failures:
                table.add_row(f.plugin, f.stage, f.error)
            console.print(table)
        else:
            console.print("[green]no plugin failed to load[/green]")


def _details(kind: str, factory) -> str:
    if kind == "attention":
        from ..attention import CAPABILITY_FLAGS

        flags = [f for f in CAPABILITY_FLAGS if getattr(factory, f, False)]
        return ", ".join(f.replace("supports_", "") for f in flags)
    if kind == "task":
        return f"{factory.kind}; primary metric {factory.primary_metric}"
    return ", ".join(getattr(factory, "kinds", ()))
