"""Experiment files: validate the YAML with pydantic, apply ``--set`` overrides, expand the grid.

Shape (README "Grid files")::

    name: quick
    grid:
      task: [sentiment]
      model:
        - {family: rnn, cell: lstm}
        - {family: transformer, attention: multihead}
      seed: [0]
      exclude: [{task: qa, model: rnn-lstm}]   # pairings to skip
    model: {d_model: 64, n_layers: 2, n_heads: 4, dropout: 0.1}
    train: {epochs: 3, batch_size: 32, lr: 1.0e-3, max_steps: null}
    tasks:
      sentiment: {data: {source: synthetic, n_train: 2000}}
      translation: {train: {group_by_length: true}}   # this task's pairings only
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from ..errors import BadInputError
from ..models import ModelDims
from ..options import OptionsError, Problem, join_path, parse_options, short_repr
from .execution import ExecutionConfig
from ..plugin_host import PluginHost
from .eval_override import EvalOverride
from .yaml_loader import load_yaml_text

# Names become MLflow experiment names and folders under the artifact root: no '/', no '..'.
# Model labels may also hold '+' (rnn-lstm+additive).
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$")
SAFE_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+\-]{0,99}$")
SAFE_NAME_RULE = "1-100 letters, digits, '_', '.', '-', starting with a letter or digit"
SAFE_LABEL_RULE = "1-100 letters, digits, '_', '.', '+', '-', starting with a letter or digit"


def check_name(value: str, label: bool = False) -> str:
    if not (SAFE_LABEL if label else SAFE_NAME).match(value) or ".." in value:
        raise ValueError(f"not a valid name; use {SAFE_LABEL_RULE if label else SAFE_NAME_RULE}")
    return value


SafeName = Annotated[str, AfterValidator(check_name)]


class Exclusion(BaseModel):
    """One ``grid.exclude`` entry: pairings matching every given field are skipped."""

    model_config = ConfigDict(extra="forbid")
    task: str | None = None
    model: str | None = Field(None, description="a model label (as --dry-run shows it) or a family name")
    seed: int | None = None

    def matches(self, task: str, label: str, family: str, seed: int) -> bool:
        return ((self.task is None or self.task == task) and (self.model is None or self.model in (label, family))
                and (self.seed is None or self.seed == seed))


class GridAxes(BaseModel):
    """The axes whose cartesian product is the list of runs."""

    model_config = ConfigDict(extra="forbid")
    task: list[str] = Field(min_length=1)
    model: list[dict[str, Any]] = Field(min_length=1)
    seed: list[int] = Field(default_factory=lambda: [0], min_length=1)
    exclude: list[Exclusion] = Field(default_factory=list, description="pairings to skip")

    @field_validator("task", "seed")
    @classmethod
    def _no_repeats(cls, values: list) -> list:
        repeated = sorted({v for v in values if values.count(v) > 1}, key=str)
        if repeated:
            raise ValueError(f"{short_repr(repeated)} listed more than once; each pairing would train twice")
        return values


class TrainConfig(BaseModel):
    """Training budget and optimiser settings, shared by every run of the grid."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(32, ge=1)
    eval_batch_size: int | None = Field(None, ge=1, description="default: 2 * batch_size")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    grad_clip: float | None = Field(1.0, gt=0)
    warmup_steps: int = Field(0, ge=0)
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimiser steps")
    group_by_length: bool = Field(
        False, description="train on shuffled batches of examples of similar length (less padding, same number of steps)")
    log_every: int = Field(10, ge=1, description="log train/loss every N steps")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: Literal["auto", "off", "bf16"] = Field("auto", description="auto: bf16 autocast on cuda")
    save_checkpoint: bool = True
    threads: int | None = Field(
        None, ge=1, description="CPU threads for torch (default: torch's choice); 1 is often fastest for tiny models")


# ``tasks.<name>.train`` overrides ``train`` for that task's pairings (a task's own budget);
# these settings belong to the process that trains, so they are set for the whole grid only.
TASK_TRAIN_KEY = "train"
GRID_WIDE_TRAIN = ("device", "threads")


def task_train(grid_train: TrainConfig, raw: Any, where: str) -> TrainConfig:
    """The grid's ``train`` with one task's ``tasks.<name>.train`` fields laid over it."""
    if raw is None:
        return grid_train
    if not isinstance(raw, dict):
        raise OptionsError([Problem(where, f"expected a mapping of train fields (e.g. {{epochs: 6}}), "
                                           f"got {short_repr(raw)}")])
    problems = [Problem(join_path(where, key), f"set for the whole grid only (train.{key}): it applies to "
                                              "the process that trains, not to one task")
                for key in GRID_WIDE_TRAIN if key in raw]
    if problems:
        raise OptionsError(problems)
    return parse_options(TrainConfig, grid_train.model_dump() | raw, where)


class ExperimentFile(BaseModel):
    """A whole grid file."""

    model_config = ConfigDict(extra="forbid")
    name: SafeName
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
    short_label: str = ""  # the model label without its family prefix, when that stays unique
    # part -> "<distribution> <version>[ source <hash>]" of the plugin providing it (run/provenance.py)
    provenance: dict[str, str] = field(default_factory=dict)

    @property
    def run_name(self) -> str:
        """The MLflow run name: short, because the UI cuts names at about 16 characters."""
        return f"{self.task}/{self.short_label or self.model_label}/s{self.seed}"

    @property
    def description(self) -> str:
        """The full description (logged as the ``attnbench.description`` tag)."""
        return f"task {self.task}, model {self.model_label} (family {self.family}), seed {self.seed}"

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
        if not config["train"].get("group_by_length"):  # added later: at its default, keys stay as they were
            config["train"].pop("group_by_length", None)
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
    """Read a grid file: UTF-8, no duplicate keys, aliases bounded (see :mod:`.yaml_loader`)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise BadInputError(f"{path}: no such experiment file") from None
    except OSError as exc:
        raise BadInputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    data = load_yaml_text(raw, str(path))
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


def load_experiment(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> tuple[ExperimentFile, dict]:
    """Read, override and validate a grid file. Returns the model and the raw (overridden) dict."""
    path = Path(path)
    data = read_yaml(path)
    for assignment in overrides:
        apply_override(data, assignment)
    try:
        experiment = parse_options(ExperimentFile, data)
    except OptionsError as exc:
        hint = f" (after --set {', '.join(overrides)})" if overrides else ""
        raise OptionsError(exc.problems, source=f"{path}{hint}") from None
    return experiment, data


# ---------------------------------------------------------------- grid expansion


@dataclass
class SkippedPairing:
    """A (task, model) pairing the grid names but that will not run, and why."""

    task: str
    model_label: str
    reason: str


@dataclass
class GridPlan:
    """What a grid will run (``specs``) and the pairings it leaves out (``skipped``)."""

    specs: list[RunSpec]
    skipped: list[SkippedPairing] = field(default_factory=list)


def expand_grid(experiment: ExperimentFile, host: PluginHost, source: str = "experiment") -> list[RunSpec]:
    """The runs of a grid (see :func:`plan_grid`, which also says what it skips)."""
    return plan_grid(experiment, host, source).specs


def plan_grid(experiment: ExperimentFile, host: PluginHost, source: str = "experiment") -> GridPlan:
    """Cartesian product task x model x seed, with every name checked against the plugins.

    Pairings listed under ``grid.exclude``, and those whose family cannot build a model for
    the task's kind, are skipped with a reason. All problems are collected and reported
    together, each with its field path."""
    problems: list[Problem] = []
    dims_keys = list(ModelDims.model_fields)

    tasks: dict[str, tuple[type, BaseModel]] = {}
    task_trains: dict[str, TrainConfig] = {}
    for i, task_name in enumerate(experiment.grid.task):
        where = join_path("grid.task", i)
        if task_name not in host.task:
            problems.append(Problem(where, _unknown(host, "task", task_name)))
            continue
        task_cls = host.task.get(task_name).factory
        task_raw = dict(experiment.tasks.get(task_name) or {})
        train_raw = task_raw.pop(TASK_TRAIN_KEY, None)
        try:
            task_trains[task_name] = task_train(experiment.train, train_raw, f"tasks.{task_name}.{TASK_TRAIN_KEY}")
        except OptionsError as exc:
            problems.extend(exc.problems)
        try:
            # as for model entries below: the task's Options, plus the key stripped above
            options = parse_options(task_cls.Options, task_raw or None, f"tasks.{task_name}", also_valid=[TASK_TRAIN_KEY])
            tasks[task_name] = (task_cls, options)
        except OptionsError as exc:
            problems.extend(exc.problems)
        except BadInputError as exc:
            problems.append(Problem(f"tasks.{task_name}", str(exc)))
    for name in experiment.tasks:
        if name not in experiment.grid.task:
            problems.append(Problem(f"tasks.{name}", f"task is not in grid.task {experiment.grid.task}"))

    models: list[tuple[str, BaseModel, ModelDims, str, object]] = []
    for i, entry in enumerate(experiment.grid.model):
        where = join_path("grid.model", i)
        if "family" not in entry:
            problems.append(Problem(f"{where}.family", f"required (valid: {', '.join(host.model.names())})"))
            continue
        family_name = entry["family"]
        if family_name not in host.model:
            problems.append(Problem(f"{where}.family", _unknown(host, "model", family_name)))
            continue
        family_cls = host.model.get(family_name).factory
        dims_raw = experiment.model.model_dump() | {k: v for k, v in entry.items() if k in dims_keys}
        family_raw = {k: v for k, v in entry.items() if k not in dims_keys and k not in ("family", "label")}
        try:
            dims = parse_options(ModelDims, dims_raw, where)
            family = family_cls(parse_options(family_cls.Options, family_raw, where,
                                              also_valid=["family", "label", *dims_keys]))
            family.validate(host)
        except OptionsError as exc:
            # a family validating nested options (attention_options) names paths inside its entry
            problems.extend(p if p.path.startswith(where) else Problem(join_path(where, p.path), p.message)
                            for p in exc.problems)
            continue
        except BadInputError as exc:
            problems.append(Problem(where, str(exc)))
            continue
        label = str(entry.get("label") or family.label())
        try:
            check_name(label, label=True)
        except ValueError as exc:
            problems.append(Problem(f"{where}.label", f"{short_repr(label)} is {exc}"))
            continue
        models.append((family_name, family.options, dims, label, family))

    labels = [m[3] for m in models]
    for label in sorted({l for l in labels if labels.count(l) > 1}):
        problems.append(Problem("grid.model", f"two entries share the label {label!r}; give one a distinct "
                                              "`label:` (e.g. label: transformer-lsh-4h)"))
    for i, rule in enumerate(experiment.grid.exclude):
        if not any(rule.matches(t, m[3], m[0], seed) for t in tasks for m in models for seed in experiment.grid.seed):
            problems.append(Problem(join_path("grid.exclude", i),
                                    f"matches no pairing of the grid (tasks: {', '.join(tasks)}; models: "
                                    f"{', '.join(labels)}; seeds: {experiment.grid.seed})"))
    if problems:
        raise OptionsError(problems, source=source)

    shorts = _short_labels([(m[0], m[3]) for m in models])
    plan = GridPlan([])
    for task_name, (family_name, options, dims, label, family) in itertools.product(experiment.grid.task, models):
        task_cls = tasks[task_name][0]
        if family.kinds and task_cls.kind not in family.kinds:
            plan.skipped.append(SkippedPairing(task_name, label, f"family {family_name!r} builds "
                                               f"{', '.join(family.kinds)} models, not {task_cls.kind!r}"))
            continue
        for seed in experiment.grid.seed:
            rule = next((r for r in experiment.grid.exclude if r.matches(task_name, label, family_name, seed)), None)
            if rule is not None:
                plan.skipped.append(SkippedPairing(task_name, f"{label} seed {seed}", "grid.exclude"))
                continue
            plan.specs.append(RunSpec(
                grid_name=experiment.name, task=task_name, task_options=tasks[task_name][1],
                family=family_name, family_options=options, model_label=label, dims=dims,
                train=task_trains[task_name], seed=seed, evaluate_with=experiment.evaluate_with,
                short_label=shorts[label],
            ))
    _refuse_duplicate_runs(plan.specs, source)
    if not plan.specs:
        raise BadInputError(f"{source}: nothing to run: every pairing is skipped ("
                            + "; ".join(f"{s.task}/{s.model_label}: {s.reason}" for s in plan.skipped[:3]) + ")")
    return plan


def _unknown(host: PluginHost, kind: str, name) -> str:
    """The registry's message for an unknown name (valid names, allow-list hint)."""
    try:
        host.registry(kind).get(name)
        return ""
    except BadInputError as exc:
        return str(exc)


def _short_labels(models: list[tuple[str, str]]) -> dict[str, str]:
    """Label -> label without its ``<family>-`` prefix (``transformer-lsh`` -> ``lsh``), unless
    that would make two models look the same."""
    short = {label: label[len(family) + 1:] if label.startswith(family + "-") else label for family, label in models}
    counts = list(short.values())
    return {label: s if counts.count(s) == 1 else label for label, s in short.items()}


def _refuse_duplicate_runs(specs: list[RunSpec], source: str) -> None:
    """Two entries that resolve to the same config would train the same pairing twice."""
    seen: dict[str, RunSpec] = {}
    for spec in specs:
        first = seen.setdefault(spec.run_key, spec)
        if first is not spec:
            raise BadInputError(
                f"{source}: grid.model: {first.model_label!r} and {spec.model_label!r} are the same model "
                f"(identical resolved config), so {spec.task} seed {spec.seed} would train twice; remove one entry"
            )
