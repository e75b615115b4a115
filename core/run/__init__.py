"""Running a grid: the run record (what a run holds in MLflow), tracking set-up, the training
loop, per-run pictures and the grid runner."""
