"""``attnbench plugins``: what is registered, by which plugin, and what failed to load."""

from __future__ import annotations

import json
from typing import List, Optional

import typer
from rich.table import Table

from .common import PLUGIN_OPTION, VERBOSE_OPTION, console, err_console, user_errors


def plugins(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
    plugin: Optional[List[str]] = PLUGIN_OPTION,
    verbose: bool = VERBOSE_OPTION,
):
    """List registered attention variants, model families and tasks, and plugins that failed."""
    from ..plugin_host import get_host

    with user_errors():
        host = get_host(plugin or [])
        if as_json:
            data = host.as_dict()
            for kind in ("attention", "model", "task"):
                for entry in data[kind]:
                    entry["details"] = _details(kind, host.registry(kind).get(entry["name"]).factory)
            typer.echo(json.dumps(data, indent=2))
            return
        for kind, title in (("attention", "attention variants"), ("model", "model families"), ("task", "tasks")):
            table = Table(title=title, title_justify="left")
            # module names never break mid-word: they get their own line and the details wrap
            table.add_column("name", style="bold", no_wrap=True)
            table.add_column("registered by", no_wrap=True, overflow="ellipsis")
            table.add_column("details", ratio=1)
            for reg in sorted(host.registry(kind), key=lambda r: r.name):
                table.add_row(reg.name, _plugin_cell(reg.plugin), _details(kind, reg.factory))
            console.print(table)
        for warning in host.warnings:
            err_console.print(f"[yellow]warning: {warning}[/yellow]", highlight=False)
        if host.failures:
            table = Table(title="plugins that failed to load or clashed (nothing of theirs is registered)",
                          title_justify="left", style="red")
            table.add_column("plugin", no_wrap=True, overflow="ellipsis")
            table.add_column("stage", no_wrap=True)
            table.add_column("error", ratio=1)
            for f in host.failures:
                table.add_row(_plugin_cell(f.plugin), f.stage, f.error)
            console.print(table)
            if verbose:
                for f in host.failures:
                    if f.traceback:
                        console.print(f"[bold]{f.plugin}[/bold]", highlight=False)
                        console.print(f.traceback, markup=False, highlight=False)
            else:
                console.print("[dim]--verbose shows their tracebacks[/dim]")
        else:
            console.print("[green]no plugin failed to load[/green]")


def _plugin_cell(plugin: str) -> str:
    """``dist (module)`` on two lines, so a narrow terminal cuts neither name."""
    return plugin.replace(" (", "\n(", 1)


def _details(kind: str, factory) -> str:
    if kind == "attention":
        from ..attention import CAPABILITY_FLAGS

        flags = [f for f in CAPABILITY_FLAGS if getattr(factory, f, False)]
        return ", ".join(f.replace("supports_", "") for f in flags)
    if kind == "task":
        return f"{factory.kind}; primary metric {factory.primary_metric}"
    return ", ".join(getattr(factory, "kinds", ()))
