"""Sweeps: specs and the runner, executors (local, Ray), results, built-in experiments."""

from vaelab._deprecated import moved_name
from vaelab.sweep.runner import (
    SweepSpec,
    Trial,
    expand_grid,
    parse_grid,
    read_results,
    run_sweep,
)

__all__ = ["SweepSpec", "Trial", "expand_grid", "parse_grid", "read_results", "run_sweep"]


def __getattr__(name: str):  # trial_config was exported here until the sweep package was split (gone in 0.3)
    return moved_name(__name__, name, {"trial_config": "vaelab.sweep.runner"})
