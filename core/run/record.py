"""The run record: what attnbench writes into an MLflow run and reads back, in one place.

Every writer (the runner, bench, test fixtures) builds tags through :func:`child_tags` /
:func:`parent_tags` and these constants; every reader (compare, the matrix, plots) turns an
MLflow run into a :class:`RunRecord` with :func:`RunRecord.from_mlflow`. Nobody else spells an
``attnbench.*`` tag, so renaming one is a change to this file alone.

A child run holds:

- tags: :class:`Tag` (task, family, model, seed, run_key, ...), ``mlflow.parentRunId``; what
  the plugins declare is a tag too (the task's primary metric, direction and scale, whether
  the family is a no-attention baseline), so compare reads it from the run alone;
- params: the resolved grid config, flattened (``model.attention``, ``train.lr``, ...);
- metrics by prefix: ``train/`` per step, ``val/`` per epoch, ``test/`` at the end,
  ``test_<override>/`` for ``evaluate_with`` re-evaluations, ``perf/`` (see :data:`PERF`;
  seconds per phase under :data:`PHASE_PREFIX`), ``heads/`` (see :func:`head_metric`); a
  task's trivial baselines beside its own metrics (see :func:`trivial_metric`);
- artifacts: :data:`PREDICTIONS`, :data:`TRACEBACK` (FAILED runs), :data:`CHECKPOINT`,
  :data:`HEADS_TABLE`, pictures under :data:`PICTURES_DIR`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PREFIX = "attnbench."
PARENT_RUN_ID = "mlflow.parentRunId"  # MLflow's own tag that nests a run under its parent
NOTE = "mlflow.note.content"  # MLflow's run description (the grid file on the parent run)


class Tag:
    """Names of the ``attnbench.*`` tags."""

    ROLE = PREFIX + "role"  # "parent" or "child"
    GRID = PREFIX + "grid"
    TASK = PREFIX + "task"
    KIND = PREFIX + "kind"  # the task kind: classification, span, seq2seq, lm (or "bench")
    FAMILY = PREFIX + "family"
    ATTENTION = PREFIX + "attention"  # attention variant, "none" for families without one
    ATTENTION_FALLBACK = PREFIX + "attention_fallback"  # slot->variant used where the asked one cannot serve
    MODEL = PREFIX + "model"  # the model label (run names show it without its family prefix)
    DESCRIPTION = PREFIX + "description"  # the full description of a pairing; run names stay short
    SEED = PREFIX + "seed"
    RUN_KEY = PREFIX + "run_key"  # hash of the resolved config: a FINISHED key is never retrained
    PRIMARY_METRIC = PREFIX + "primary_metric"
    GREATER_IS_BETTER = PREFIX + "greater_is_better"
    METRIC_SCALE = PREFIX + "metric_scale"  # best possible primary metric: 1 (fractions) or 100 (BLEU, F1)
    BASELINE = PREFIX + "baseline"  # "true" when the family declared itself a no-attention baseline
    DEVICE = PREFIX + "device"
    ERROR = PREFIX + "error"  # one-line reason on FAILED runs
    # Claims (core/run/claims.py): a RUNNING run is a claim on its run_key while its heartbeat is fresh.
    OWNER = PREFIX + "owner"  # host:pid of the process that holds the run
    HEARTBEAT = PREFIX + "heartbeat"  # unix seconds, refreshed while the run is alive
    CLAIM = PREFIX + "claim"  # CLAIM_PENDING, then CLAIM_HELD, or "lost to <run id>"
    CLOSED_BECAUSE = PREFIX + "closed_because"  # why someone else closed this run (LOST_HEARTBEAT, WORKER_DIED)
    # Provenance: the plugin that provided each part, "<distribution> <version>[ source <hash>]".
    PROVIDED_BY = PREFIX + "provided_by."  # + "task" / "family" / "attention"
    HEAD_STATS = PREFIX + "head_stats"  # why a run has no head statistics (variant returns no weights)
    ENV = PREFIX + "env."  # + "torch" / "cpu" / "cpu_capability" / "kernel_switches" / "gpu": what computed the figures (run/environment.py)


CLAIM_PENDING = "pending"  # created, waiting to see whether another claimer got there first
CLAIM_HELD = "held"  # won: this run trains the pairing
LOST_HEARTBEAT = "lost heartbeat"
WORKER_DIED = "worker process died"  # closed by the invoking process that saw it die


def claim_lost_to(run_id: str) -> str:
    return f"lost to {run_id}"


def provenance_tags(provenance: dict[str, str]) -> dict[str, str]:
    """``{"task": "attnbench 0.1.0", ...}`` -> ``{"attnbench.provided_by.task": ...}``."""
    return {Tag.PROVIDED_BY + part: text for part, text in provenance.items()}


ROLE_PARENT = "parent"
ROLE_CHILD = "child"
CHILD_FILTER = f"tags.`{Tag.ROLE}` = '{ROLE_CHILD}'"
PARENT_FILTER = f"tags.`{Tag.ROLE}` = '{ROLE_PARENT}'"

# Metric name prefixes and the perf/ metrics every child run logs.
TRAIN, VAL, TEST, PERF_PREFIX = "train/", "val/", "test/", "perf/"
PERF = {
    "params": "perf/params",
    "tokens_per_s": "perf/train_tokens_per_s",
    "wall_s": "perf/wall_s",
    "train_s": "perf/train_s",
    "peak_mem_mib": "perf/peak_mem_mib",
    "steps": "perf/steps",
    "pairing_s": "perf/pairing_s",  # the whole pairing: the sum of its phases
}
PHASE_PREFIX = "perf/phase/"  # perf/phase/<phase>_s: data, tokenizer, train, eval, pictures, tracking, other


def phase_metric(phase: str) -> str:
    """Seconds a pairing spent in ``phase`` (exclusive: nested phases are not counted twice)."""
    return f"{PHASE_PREFIX}{phase}_s"


def phase_of(metric: str) -> str | None:
    """The phase a :func:`phase_metric` name holds, else None."""
    if metric.startswith(PHASE_PREFIX) and metric.endswith("_s"):
        return metric[len(PHASE_PREFIX):-2]
    return None


# Head statistics: heads/<attention module>/h<head>/<statistic>, one value per run.
HEADS_PREFIX = "heads/"
HEAD_STATISTICS = ("distance", "entropy", "first_token")


def head_metric(module: str, head: int, statistic: str) -> str:
    return f"{HEADS_PREFIX}{module}/h{head}/{statistic}"

# Trivial baselines: scores a task computes from the data alone, without a model, logged beside
# the model's own metrics (test/trivial_<baseline>_<metric>); compare shows them as reference rows.
TRIVIAL_PREFIX = "trivial_"


def trivial_metric(baseline: str, metric: str) -> str:
    """``trivial_<baseline>_<metric>``: the score ``metric`` (one of the task's own metrics, e.g.
    ``f1``) of a trivial baseline computed from the data alone, e.g. ``trivial_first_words_f1``."""
    return f"{TRIVIAL_PREFIX}{baseline}_{metric}"


def is_trivial_metric(name: str) -> bool:
    """Whether ``name`` (with or without a split prefix such as ``val/``) is a trivial baseline's score."""
    return name.rpartition("/")[2].startswith(TRIVIAL_PREFIX)


def parse_trivial_metric(name: str, metrics) -> tuple[str, str] | None:
    """``(baseline, metric)`` of a :func:`trivial_metric` name, ``metric`` the longest of the task's
    ``metrics`` that ends it (``trivial_overlap_sentence_exact_match`` -> ``overlap_sentence``,
    ``exact_match``); None when ``name`` is not a trivial baseline's."""
    if not name.startswith(TRIVIAL_PREFIX):
        return None
    rest = name[len(TRIVIAL_PREFIX):]
    for metric in sorted(metrics, key=len, reverse=True):
        if rest.endswith("_" + metric) and len(rest) > len(metric) + 1:
            return rest[: -len(metric) - 1], metric
    baseline, _, metric = rest.rpartition("_")  # a metric the models did not log
    return (baseline, metric) if baseline and metric else None


# Artifact names.
PREDICTIONS = "predictions.jsonl"
TRACEBACK = "traceback.txt"
GRID_FILE = "grid.yaml"
CHECKPOINT = "checkpoint"  # folder holding model.pt
PICTURES_DIR = "pictures"
HEADS_TABLE = "heads.csv"  # one row per attention module and head
HEAD_STATS_PICTURE = "head_stats.png"  # under PICTURES_DIR


def tag(name: str) -> str:
    """The full tag name for a short one a plugin returns (``attention`` -> ``attnbench.attention``)."""
    return name if name.startswith(PREFIX) else PREFIX + name


def override_prefix(name: str) -> str:
    """Metric prefix of a test-split re-evaluation with changed attention options."""
    return f"test_{name}/"


def parent_tags(grid: str, note: str = "") -> dict[str, str]:
    tags = {Tag.ROLE: ROLE_PARENT, Tag.GRID: grid}
    if note:
        tags[NOTE] = note
    return tags


def run_key_filter(run_key: str) -> str:
    """``search_runs`` filter for every child run of one pairing (any status)."""
    return f"{CHILD_FILTER} and tags.`{Tag.RUN_KEY}` = '{run_key}'"


def child_tags(*, parent_run_id: str, grid: str, task: str, kind: str, family: str, model: str,
               seed: int, run_key: str, primary_metric: str, greater_is_better: bool,
               attention: str = "none", description: str = "", metric_scale: float | None = None,
               baseline: bool = False, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The tags of a child run; ``extra`` holds a family's own (short or full) tag names.

    ``metric_scale`` and ``greater_is_better`` come from the task, ``baseline`` from the model
    family (``ModelFamily.is_baseline``): compare reads them instead of guessing from names."""
    tags = {
        Tag.ROLE: ROLE_CHILD, Tag.GRID: grid, Tag.TASK: task, Tag.KIND: kind, Tag.FAMILY: family,
        Tag.MODEL: model, Tag.SEED: str(seed), Tag.RUN_KEY: run_key, Tag.PRIMARY_METRIC: primary_metric,
        Tag.GREATER_IS_BETTER: _flag(greater_is_better), Tag.ATTENTION: attention,
        Tag.BASELINE: _flag(baseline), PARENT_RUN_ID: parent_run_id,
    }
    if description:
        tags[Tag.DESCRIPTION] = description
    if metric_scale is not None:
        tags[Tag.METRIC_SCALE] = f"{float(metric_scale):g}"
    tags.update({tag(k): str(v) for k, v in (extra or {}).items()})
    return tags


def env_tags(environment: dict[str, str]) -> dict[str, str]:
    """``{"torch": "2.13.0+cpu", ...}`` -> ``{"attnbench.env.torch": ...}``."""
    return {Tag.ENV + name: value for name, value in environment.items()}


def _flag(value: bool) -> str:
    return str(bool(value)).lower()


@dataclass
class RunRecord:
    """One child run as compare, the matrix and the plots read it."""

    run_id: str
    name: str
    status: str
    task: str
    kind: str
    family: str
    attention: str
    model: str
    seed: int | None
    run_key: str
    primary_metric: str
    greater_is_better: bool
    metrics: dict[str, float]
    artifact_uri: str
    parent_run_id: str | None
    start_time: int = 0
    error: str = ""  # the runner's Tag.ERROR on FAILED runs
    tags: dict[str, str] = field(default_factory=dict, repr=False)
    params: dict[str, str] = field(default_factory=dict, repr=False)  # the resolved config, flattened
    baseline: bool = False  # the family is a no-attention baseline (Tag.BASELINE)
    metric_scale: float | None = None  # Tag.METRIC_SCALE; None for runs logged before it existed

    @classmethod
    def from_mlflow(cls, run) -> "RunRecord":
        """From an ``mlflow.entities.Run`` (as ``search_runs`` returns them)."""
        tags = run.data.tags
        seed = tags.get(Tag.SEED)
        return cls(
            run_id=run.info.run_id,
            name=run.info.run_name or tags.get("mlflow.runName", run.info.run_id),
            status=run.info.status,
            task=tags.get(Tag.TASK, "?"),
            kind=tags.get(Tag.KIND, "?"),
            family=tags.get(Tag.FAMILY, "?"),
            attention=tags.get(Tag.ATTENTION, "?"),
            model=tags.get(Tag.MODEL, "?"),
            seed=int(seed) if seed not in (None, "") and str(seed).lstrip("-").isdigit() else None,
            run_key=tags.get(Tag.RUN_KEY, run.info.run_id),
            primary_metric=tags.get(Tag.PRIMARY_METRIC, ""),
            greater_is_better=tags.get(Tag.GREATER_IS_BETTER, "true").lower() != "false",
            metrics=dict(run.data.metrics),
            artifact_uri=run.info.artifact_uri,
            parent_run_id=tags.get(PARENT_RUN_ID),
            start_time=run.info.start_time or 0,
            error=tags.get(Tag.ERROR, ""),
            tags=dict(tags),
            params=dict(run.data.params),
            # runs logged before Tag.BASELINE existed: a family without attention was the baseline
            baseline=(tags[Tag.BASELINE] == "true" if Tag.BASELINE in tags else tags.get(Tag.ATTENTION) == "none"),
            metric_scale=_float_or_none(tags.get(Tag.METRIC_SCALE)),
        )

    @property
    def environment(self) -> str:
        """What computed the run, in one line (``torch 2.13.0+cpu, AMD EPYC (AVX2)``); "" for
        runs logged before attnbench recorded it."""
        env = {key[len(Tag.ENV):]: value for key, value in self.tags.items() if key.startswith(Tag.ENV)}
        if not env:
            return ""
        where = env.get("gpu") or f"{env.get('cpu', '?')} ({env.get('cpu_capability', '?')})"
        switches = f" under {env['kernel_switches']}" if env.get("kernel_switches") else ""
        return f"torch {env.get('torch', '?')}, {where}{switches}"

    @property
    def is_child(self) -> bool:
        return self.tags.get(Tag.ROLE, ROLE_CHILD) == ROLE_CHILD


def _float_or_none(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None
