"""The experiment grid: YAML -> validated :class:`ExperimentFile` -> expanded :class:`RunSpec` list."""

from .experiment import (ExperimentFile, GridPlan, RunSpec, SkippedPairing, TrainConfig, apply_override, expand_grid,
                         load_experiment, plan_grid)

__all__ = ["ExperimentFile", "GridPlan", "RunSpec", "SkippedPairing", "TrainConfig", "apply_override", "expand_grid",
           "load_experiment", "plan_grid"]
