"""Tie each pairing to the code that makes its result: the plugins providing its task, model
family and attention variant (distribution, version, source hash; see plugin_host/provenance.py).

Goes into ``RunSpec.provenance`` (and so the run_key, unless the grid opts out with
``execution.provenance_in_run_key: false``) and into the ``provided_by`` tags of every run.
"""

from __future__ import annotations

from ..config import RunSpec
from ..plugin_host import PluginHost
from . import record


def provenance_for(spec: RunSpec, host: PluginHost) -> dict[str, str]:
    family_cls = host.model.get(spec.family).factory
    parts = {"task": host.task.get(spec.task).provenance, "family": host.model.get(spec.family).provenance}
    # The family names its attention variant in its tags (core never reads its options).
    attention = family_cls(spec.family_options).tags()
    name = next((str(v) for k, v in attention.items() if record.tag(k) == record.Tag.ATTENTION), "none")
    if name in host.attention:
        parts["attention"] = host.attention.get(name).provenance
    return parts


def attach_provenance(specs: list[RunSpec], host: PluginHost, in_run_key: bool = True) -> None:
    """Make the providing plugins part of each spec's run_key (unless the grid opted out)."""
    for spec in specs:
        spec.provenance = provenance_for(spec, host) if in_run_key else {}
