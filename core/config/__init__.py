"""The experiment grid: YAML -> validated :class:`ExperimentFile` -> expanded :class:`RunSpec` list."""

from .experiment import ExperimentFile, RunSpec, TrainConfig, apply_override, expand_grid, load_experiment

__all__ = ["ExperimentFile", "RunSpec", "TrainConfig", "apply_override", "expand_grid", "load_experiment"]
