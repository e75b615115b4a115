"""Paired significance tests of a model against its task's baseline, on saved predictions.

Both tests pair the same test example, produced with the same training seed, in the two
runs: the unit of resampling is a ``(seed, example id)`` pair present in both. That keeps
the test paired when several seeds were trained, and needs no per-seed averaging of
corpus-level metrics such as BLEU (which cannot be averaged per sentence).

- Translation: ``sacrebleu.significance.PairedTest`` with ``test_type="bs"`` (paired
  bootstrap resampling, Koehn 2004) on the hypotheses and references of predictions.jsonl.
- Per-example metrics (classification accuracy, QA F1 / exact match): a paired bootstrap
  over the per-example score differences with the same two-sided p-value that sacrebleu
  uses, so p-values mean the same thing across tasks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

N_BOOTSTRAP = 1000
BOOTSTRAP_SEED = 12345  # fixed, like SACREBLEU_SEED's default: the same runs give the same p
ALPHA = 0.05


@dataclass
class PairedSample:
    """Aligned outputs of a model and its baseline on the same ``(seed, id)`` units."""

    keys: list[tuple]
    system: list[dict]
    baseline: list[dict]


def align(system: dict[int, dict], baseline: dict[int, dict]) -> PairedSample:
    """Pair predictions by seed and example id.

    ``system`` / ``baseline`` map seed -> {example id -> prediction record}. Only seeds and
    ids present in both take part."""
    keys, sys_rows, base_rows = [], [], []
    for seed in sorted(set(system) & set(baseline)):
        sys_by_id, base_by_id = system[seed], baseline[seed]
        for example_id in sys_by_id:
            if example_id in base_by_id:
                keys.append((seed, example_id))
                sys_rows.append(sys_by_id[example_id])
                base_rows.append(base_by_id[example_id])
    return PairedSample(keys, sys_rows, base_rows)


def bootstrap_p_value(system_scores: Sequence[float], baseline_scores: Sequence[float],
                      n_samples: int = N_BOOTSTRAP, seed: int = BOOTSTRAP_SEED) -> float:
    """Two-sided paired bootstrap p-value for "the mean scores differ".

    Resamples units with replacement, centres the resampled absolute differences on their
    mean (the null of no difference) and counts how often they reach the observed one;
    ``(c + 1) / (n + 1)`` as in sacrebleu, so p is never 0. Ties count as reaching it
    (sacrebleu counts only strict excesses, which makes identical systems "significant").
    """
    sys_arr = np.asarray(system_scores, dtype=np.float64)
    base_arr = np.asarray(baseline_scores, dtype=np.float64)
    if sys_arr.shape != base_arr.shape or sys_arr.size == 0:
        raise ValueError("bootstrap needs two non-empty score lists of equal length")
    observed = abs(sys_arr.mean() - base_arr.mean())
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, sys_arr.size, size=(n_samples, sys_arr.size))
    sample_diffs = np.abs(sys_arr[idx].mean(axis=1) - base_arr[idx].mean(axis=1))
    centred = sample_diffs - sample_diffs.mean()
    return float(min(1.0, (np.sum(centred >= observed) + 1) / (n_samples + 1)))


def _references(record: dict) -> list[str]:
    refs = record.get("references")
    if refs is None:
        refs = [record.get("reference", "")]
    if isinstance(refs, str):
        refs = [refs]
    return [str(r) for r in refs] or [""]


def accuracy_score(record: dict) -> float:
    """1.0 when the prediction equals the reference (classification)."""
    return float(record.get("prediction") == record.get("reference"))


def _squad_scorer(metric: str) -> Callable[[dict], float] | None:
    """Per-question F1 / exact match (0-1, best over gold answers) from the qa task's metric
    module, or None when that plugin is not installed."""
    try:
        from attnbench.plugins.tasks import squad_metric
    except ImportError:
        return None
    fn = {"f1": squad_metric.f1, "exact_match": squad_metric.exact_match}[metric]

    def score(record: dict) -> float:
        return float(squad_metric.best_over_golds(fn, str(record.get("prediction", "")), _references(record)))

    return score


def example_scorer(kind: str, metric: str) -> Callable[[dict], float] | None:
    """The per-example score whose mean is ``metric``, or None when there is none."""
    if kind == "classification" and metric == "accuracy":
        return accuracy_score
    if kind == "span" and metric in ("f1", "exact_match"):
        return _squad_scorer(metric)
    return None


def paired_bootstrap(sample: PairedSample, scorer: Callable[[dict], float]) -> float:
    """p-value of the paired bootstrap over per-example scores."""
    return bootstrap_p_value([scorer(r) for r in sample.system], [scorer(r) for r in sample.baseline])


def sacrebleu_paired_bs(samples: dict[str, PairedSample], metric: str = "bleu") -> dict[str, float]:
    """p-values of sacrebleu's paired bootstrap for several systems against one baseline.

    Systems whose aligned units are identical share one ``PairedTest`` (the baseline's
    statistics are computed once per group)."""
    from sacrebleu.metrics import BLEU, CHRF
    from sacrebleu.significance import PairedTest

    metric_cls = {"bleu": BLEU, "chrf": CHRF}[metric]
    groups: dict[tuple, list[str]] = {}
    for name, sample in samples.items():
        if sample.keys:
            groups.setdefault(tuple(sample.keys), []).append(name)
    p_values: dict[str, float] = {}
    for key, names in list(groups.items()):
        # sacrebleu's strict ">" gives identical outputs p = 1/(n+1); no difference is p = 1.
        same = [n for n in names if [r.get("prediction") for r in samples[n].system]
                == [r.get("prediction") for r in samples[n].baseline]]
        p_values.update(dict.fromkeys(same, 1.0))
        groups[key] = [n for n in names if n not in same]
    for names in groups.values():
        if not names:
            continue
        first = samples[names[0]]
        refs_per_unit = [_references(r) for r in first.baseline]
        n_streams = max(len(refs) for refs in refs_per_unit)
        # Units with fewer references repeat their first one: a duplicate reference leaves
        # BLEU/chrF unchanged, and sacrebleu needs every stream to be complete.
        streams = [[refs[i] if i < len(refs) else refs[0] for refs in refs_per_unit] for i in range(n_streams)]
        systems = [("baseline", [str(r.get("prediction", "")) for r in first.baseline])]
        systems += [(name, [str(r.get("prediction", "")) for r in samples[name].system]) for name in names]
        # References given to the metric are processed once; passed to PairedTest they would
        # be processed again for every system.
        test = PairedTest(systems, {metric: metric_cls(references=streams)}, None, test_type="bs",
                          n_samples=N_BOOTSTRAP)
        _, scores = test()
        results = next(v for k, v in scores.items() if k != "System")
        for name, result in zip(names, results[1:]):
            p_values[name] = float(result.p_value)
    return p_values
