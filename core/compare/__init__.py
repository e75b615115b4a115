"""Compare a grid's runs, in four steps that import one way:

read (MLflow -> :class:`~attnbench.run.record.RunRecord`) -> summarise (a
:class:`~attnbench.compare.summary.Comparison` per experiment, with baselines, deltas and
significance) -> render (table, markdown, CSV, JSON) -> write (files, plots, the parent run).
"""

from .read import fetch_child_runs, find_experiment, latest_parent_run_id
from .summary import Comparison, compare_experiment, summarize

__all__ = ["Comparison", "compare_experiment", "fetch_child_runs", "find_experiment", "latest_parent_run_id", "summarize"]
