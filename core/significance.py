"""Paired significance tests of a model against its task's baseline, on saved predictions.

A task declares how its primary metric is tested (``Task.significance``); compare pairs the
runs' ``predictions.jsonl`` records and asks that declaration for p-values:

- :class:`PerExampleScore`: the metric is a mean of one score per example (accuracy, SQuAD
  F1): a paired bootstrap over the per-example scores (:func:`bootstrap_p_value`), with the
  same two-sided p-value that sacrebleu uses, so p-values mean the same thing across tasks.
- :class:`SacrebleuPairedTest`: the metric is computed over a whole corpus (BLEU, chrF):
  ``sacrebleu.significance.PairedTest`` with ``test_type="bs"`` (paired bootstrap
  resampling, Koehn 2004) on the hypotheses and references.
- any other :class:`SignificanceTest` subclass a plugin writes (``p_values(samples)``).

Every test pairs the same test example, produced with the same training seed, in the two
runs: the unit of resampling is a ``(seed, example id)`` pair present in both. That keeps
the test paired when several seeds were trained, and needs no per-seed averaging of
corpus-level metrics such as BLEU (which cannot be averaged per sentence).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

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


def references(record: dict) -> list[str]:
    """The gold answers of one predictions.jsonl record (``references`` list or one ``reference``)."""
    refs = record.get("references")
    if refs is None:
        refs = [record.get("reference", "")]
    if isinstance(refs, str):
        refs = [refs]
    return [str(r) for r in refs] or [""]


class SignificanceTest:
    """How a task's primary metric is tested against the baseline (``Task.significance``).

    ``p_values`` gets, per system (model label), its :class:`PairedSample` with the baseline
    (never empty) and returns a p-value per system."""

    method: str = ""  # one line for the compare footnote

    def p_values(self, samples: Mapping[str, PairedSample]) -> dict[str, float]:
        raise NotImplementedError


class PerExampleScore(SignificanceTest):
    """The metric is (up to its scale) the mean of ``score(record)`` over the examples:
    compare runs a paired bootstrap over those scores."""

    method = "paired bootstrap over per-example scores"

    def __init__(self, score: Callable[[dict], float]):
        self.score = score

    def p_values(self, samples: Mapping[str, PairedSample]) -> dict[str, float]:
        return {name: bootstrap_p_value([self.score(r) for r in sample.system],
                                        [self.score(r) for r in sample.baseline])
                for name, sample in samples.items()}


class SacrebleuPairedTest(SignificanceTest):
    """A corpus metric of sacrebleu (``metric_cls``: ``sacrebleu.metrics.BLEU``, ``CHRF``) tested
    with sacrebleu's own paired bootstrap (``PairedTest``, ``test_type="bs"``) on the records'
    ``prediction`` and ``reference`` / ``references``."""

    method = "sacrebleu paired bootstrap (PairedTest, bs)"

    def __init__(self, metric_cls):
        self.metric_cls = metric_cls

    def p_values(self, samples: Mapping[str, PairedSample]) -> dict[str, float]:
        """Systems whose aligned units are identical share one ``PairedTest`` (the baseline's
        statistics are computed once per group)."""
        from sacrebleu.significance import PairedTest

        name_of_metric = self.metric_cls.__name__.lower()
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
            refs_per_unit = [references(r) for r in first.baseline]
            n_streams = max(len(refs) for refs in refs_per_unit)
            # Units with fewer references repeat their first one: a duplicate reference leaves
            # BLEU/chrF unchanged, and sacrebleu needs every stream to be complete.
            streams = [[refs[i] if i < len(refs) else refs[0] for refs in refs_per_unit] for i in range(n_streams)]
            systems = [("baseline", [str(r.get("prediction", "")) for r in first.baseline])]
            systems += [(name, [str(r.get("prediction", "")) for r in samples[name].system]) for name in names]
            # References given to the metric are processed once; passed to PairedTest they would
            # be processed again for every system.
            test = PairedTest(systems, {name_of_metric: self.metric_cls(references=streams)}, None, test_type="bs",
                              n_samples=N_BOOTSTRAP)
            _, scores = test()
            results = next(v for k, v in scores.items() if k != "System")
            for name, result in zip(names, results[1:]):
                p_values[name] = float(result.p_value)
        return p_values
