"""Evaluation-time attention overrides: evaluate a trained model again with other attention
options (e.g. an LSH model trained with 4 hashes, evaluated with 8), without retraining."""

from __future__ import annotations

import contextlib

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from ..attention import Attention


class EvalOverride(BaseModel):
    """One ``evaluate_with`` entry of a grid file."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9_]+$", description="metrics are logged as test_<name>/<metric>")
    attention_options: dict = Field(default_factory=dict)


@contextlib.contextmanager
def attention_options_override(model: nn.Module, update: dict):
    """Temporarily merge ``update`` into the options of every Attention module that has all
    those fields; yields how many modules changed. Other modules (e.g. multihead, which has
    no LSH options) are left as they are, which is what "evaluate with X" means for them."""
    changed: list[tuple[Attention, BaseModel]] = []
    for module in model.modules():
        if isinstance(module, Attention) and update and set(update) <= set(type(module.options).model_fields):
            changed.append((module, module.options))
            module.options = type(module.options).model_validate(module.options.model_dump() | update)
    try:
        yield len(changed)
    finally:
        for module, original in changed:
            module.options = original
