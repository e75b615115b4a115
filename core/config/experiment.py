"""Experiment files: validate the YAML with pydantic, apply ``--set`` overrides, expand the grid.

Shape (see docs/experiments.md)::

    name: quick
    grid:
      task: [sentiment]
      model:
        - {family: rnn, cell: lstm}
        - {family: transformer, attention: multihead}
      seed: [0]
    model: {d_model: 64, n_layers: 2, n_heads: 4, dropout: 0.1}
    train: {epochs: 3, batch_size: 32, lr: 1.0e-3, max_steps: null}
    tasks:
      sentiment: {data: {source: synthetic, n_train: 2000}}
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import BadInputError
from ..models import ModelDims
from .eval_override import EvalOverride
from .execution import ExecutionConfig
from ..plugin_host import PluginHost


class GridAxes(BaseModel):
    """The axes whose cartesian product is the list of runs."""

    model_config = ConfigDict(extra="forbid")
    task: list[str] = Field(min_length=1)
    model: list[dict[str, Any]] = Field(min_length=1)
    seed: list[int] = Field(default_factory=lambda: [0], min_length=1)


class TrainConfig(BaseModel):
    """Training budget and optimiser settings, shared by every run of the grid."""

    model_config = ConfigDict(extra="forbid")
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(32, ge=1)
    eval_batch_size: int | None = Field(None, ge=1, description="default: 2 * batch_size")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    grad_clip: float | None = Field(1.0, gt=0)
    warmup_steps: int = Field(0, ge=0)
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimiser steps")
    log_every: int = Field(10, ge=1, description="log train/loss every N steps")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: Literal["auto", "off", "bf16"] = Field("auto", description="auto: bf16 autocast on cuda")
    save_checkpoint: bool = True
    threads: int | None = Field(
        None, ge=1, description="CPU threads for torch (default: torch's choice); 1 is often fastest for tiny models")


class ExperimentFile(BaseModel):
    """A whole grid file."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str = ""
    grid: GridAxes
    model: ModelDims = Field(default_factory=ModelDims)
    train: TrainConfig = Field(default_factory=TrainConfig)
    tasks: dict[str, dict[str, Any]] = Field(default_factory=dict)
    evaluate_with: list[EvalOverride] = Field(
        default_factory=list, description="re-evaluate the test split with other attention options")
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig)


@dataclass
class RunSpec:
    """One pairing of the grid, fully resolved."""

    grid_name: str
    task: str
    task_options: BaseModel
    family: str
    family_options: BaseModel
    model_label: str
    dims: ModelDims
    train: TrainConfig
    seed: int
    evaluate_with: list[EvalOverride] = field(default_factory=list)
    # part -> "<distribution> <version>[ source <hash>]" of the plugin providing it (run/provenance.py)
    provenance: dict[str, str] = field(default_factory=dict)

    @property
    def run_name(self) -> str:
        return f"{self.task}/{self.model_label}/seed{self.seed}"

    def resolved(self) -> dict:
        """The full resolved config: what determines the result of this run."""
        return {
            "task": {"name": self.task, **self.task_options.model_dump(mode="json")},
            "model": {"family": self.family, **self.family_options.model_dump(mode="json"),
                      **self.dims.model_dump(mode="json")},
            "train": self.train.model_dump(mode="json"),
            "seed": self.seed,
        } | ({"evaluate_with": [e.model_dump(mode="json") for e in self.evaluate_with]} if self.evaluate_with else {})

    @property
    def run_key(self) -> str:
        # Settings that do not change results stay out of the key, so changing them
        # does not force a re-run.
        config = self.resolved()
        for cosmetic in ("log_every", "save_checkpoint", "device", "threads"):
            config["train"].pop(cosmetic, None)
        if self.provenance:  # a changed or swapped plugin is a different result
            config["provenance"] = self.provenance
        blob = json.dumps(config, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def params(self) -> dict[str, str]:
        """Flattened params for MLflow: ``task.data.n_train``, ``model.attention``, ``train.lr``..."""
        return flatten(self.resolved())


def flatten(tree: dict, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in tree.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(flatten(value, path))
        else:
            out[path] = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return out


# ---------------------------------------------------------------- loading and overrides


def read_yaml(path: Path) -> dict:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise BadInputError(f"{path}: no such experiment file") from None
    except OSError as exc:
        raise BadInputError(f"{path}: cannot read: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or str(exc)
        raise BadInputError(f"{path}: malformed YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise BadInputError(f"{path}: an experiment file must be a mapping (name:, grid:, ...), got {type(data).__name__}")
    return data


_INDEX = re.compile(r"^\d+$")
_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def apply_override(data: dict, assignment: str) -> None:
    """Apply one ``key.path=value`` (value parsed as YAML) to the raw config in place."""
    if "=" not in assignment:
        raise BadInputError(f"--set {assignment!r}: expected key.path=value, e.g. --set train.max_steps=20")
    path, raw_value = assignment.split("=", 1)
    keys = [k for k in path.strip().split(".")]
    if not path.strip() or any(not k for k in keys):
        raise BadInputError(f"--set {assignment!r}: empty key in path {path!r}")
    try:
        value = yaml.safe_load(raw_value) if raw_value.strip() else ""
    except yaml.YAMLError:
        value = raw_value
    if isinstance(value, str) and _NUMBER.match(value.strip()):
        value = float(value)  # YAML 1.1 reads "3e-4" as a string
    node: Any = data
    for depth, key in enumerate(keys[:-1]):
        here = ".".join(keys[: depth + 1])
        if isinstance(node, list):
            if not _INDEX.match(key) or int(key) >= len(node):
                raise BadInputError(f"--set {assignment!r}: {here}: no list item {key} (the list has {len(node)})")
            node = node[int(key)]
        elif isinstance(node, dict):
            if node.get(key) is None:
                node[key] = {}
            node = node[key]
        else:
            raise BadInputError(f"--set {assignment!r}: {here} is a {type(node).__name__}, not a section")
        if not isinstance(node, (dict, list)):
            raise BadInputError(f"--set {assignment!r}: {here} is a value ({node!r}), not a section")
    last = keys[-1]
    if isinstance(node, list):
        if not _INDEX.match(last) or int(last) >= len(node):
            raise BadInputError(f"--set {assignment!r}: no list item {last} (the list has {len(node)})")
        node[int(last)] = value
    else:
        node[last] = value


def _valid_fields(model_cls: type[BaseModel], loc: tuple) -> list[str]:
    """Field names valid at ``loc`` inside ``model_cls`` (to suggest after an unknown key)."""
    cls = model_cls
    for part in loc[:-1]:
        info = cls.model_fields.get(str(part)) if isinstance(cls, type) and issubclass(cls, BaseModel) else None
        if info is None or not (isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel)):
            return []
        cls = info.annotation
    return list(cls.model_fields) if isinstance(cls, type) and issubclass(cls, BaseModel) else []


def validation_message(exc: ValidationError, model_cls: type[BaseModel], prefix: str = "") -> str:
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        path = ".".join(str(p) for p in ((prefix,) if prefix else ()) + loc)
        if err["type"] == "extra_forbidden":
            valid = _valid_fields(model_cls, loc)
            lines.append(f"{path}: unknown field" + (f"; valid: {', '.join(valid)}" if valid else ""))
        elif err["type"] == "missing":
            lines.append(f"{path}: required field missing")
        else:
            lines.append(f"{path}: {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)


def load_experiment(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> tuple[ExperimentFile, dict]:
    """Read, override and validate a grid file. Returns the model and the raw (overridden) dict."""
    path = Path(path)
    data = read_yaml(path)
    for assignment in overrides:
        apply_override(data, assignment)
    try:
        experiment = ExperimentFile.model_validate(data)
    except ValidationError as exc:
        hint = f" (after --set {', '.join(overrides)})" if overrides else ""
        raise BadInputError(f"{path}{hint}:\n" + validation_message(exc, ExperimentFile)) from None
    return experiment, data


# ---------------------------------------------------------------- grid expansion


def expand_grid(experiment: ExperimentFile, host: PluginHost, source: str = "experiment") -> list[RunSpec]:
    """Cartesian product task x model x seed, with every name checked against the plugins.

    All problems are collected and reported together, each with its field path."""
    problems: list[str] = []
    dims_keys = set(ModelDims.model_fields)

    tasks: dict[str, tuple[type, BaseModel]] = {}
    for i, task_name in enumerate(experiment.grid.task):
        try:
            task_cls = host.task.get(task_name).factory
            options = task_cls.parse_options(experiment.tasks.get(task_name), where=f"tasks.{task_name}")
            tasks[task_name] = (task_cls, options)
        except BadInputError as exc:
            problems.append(f"grid.task[{i}]: {exc}" if task_name not in host.task else str(exc))
    for name in experiment.tasks:
        if name not in experiment.grid.task:
            problems.append(f"tasks.{name}: task is not in grid.task {experiment.grid.task}")

    models: list[tuple[str, BaseModel, ModelDims, str, dict, object]] = []
    for i, entry in enumerate(experiment.grid.model):
        where = f"grid.model[{i}]"
        if "family" not in entry:
            problems.append(f"{where}.family: required (valid: {', '.join(host.model.names())})")
            continue
        family_name = entry["family"]
        try:
            family_cls = host.model.get(family_name).factory
        except BadInputError as exc:
            problems.append(f"{where}.family: {exc}")
            continue
        dims_raw = experiment.model.model_dump() | {k: v for k, v in entry.items() if k in dims_keys}
        family_raw = {k: v for k, v in entry.items() if k not in dims_keys and k not in ("family", "label")}
        try:
            dims = ModelDims.model_validate(dims_raw)
            family = family_cls(family_cls.parse_options(family_raw, where=where))
            family.validate(host)
        except ValidationError as exc:
            problems.append(validation_message(exc, ModelDims, prefix=where))
            continue
        except BadInputError as exc:
            problems.append(f"{where}: {exc}" if not str(exc).startswith(where) else str(exc))
            continue
        label = entry.get("label") or family.label()
        if not re.fullmatch(r"[A-Za-z0-9_.+\-]+", str(label)):  # '+': rnn-lstm+additive
            problems.append(f"{where}.label: {label!r} may hold only letters, digits, '_', '.', '+', '-'")
            continue
        models.append((family_name, family.options, dims, label, entry, family))

    for task_name, (task_cls, _) in tasks.items():
        for family_name, _, _, label, _, family in models:
            if family.kinds and task_cls.kind not in family.kinds:
                problems.append(
                    f"grid: model family {family_name!r} cannot build a {task_cls.kind!r} model for task "
                    f"{task_name!r}; it builds {', '.join(family.kinds)}"
                )
    labels = [m[3] for m in models]
    for label in sorted({l for l in labels if labels.count(l) > 1}):
        problems.append(
            f"grid.model: two entries share the label {label!r}; give one a distinct `label:` "
            "(e.g. label: transformer-lsh-4h)"
        )
    if problems:
        raise BadInputError(f"{source}:\n" + "\n".join(f"  {p}" for p in problems))

    specs = []
    for task_name, (family_name, options, dims, label, entry, _), seed in itertools.product(
        experiment.grid.task, models, experiment.grid.seed
    ):
        specs.append(RunSpec(
            grid_name=experiment.name, task=task_name, task_options=tasks[task_name][1],
            family=family_name, family_options=options, model_label=label, dims=dims,
            train=experiment.train, seed=seed, evaluate_with=experiment.evaluate_with,
        ))
    return specs
