"""Sweeps: specs and the runner, executors (local, Ray), results, built-in experiments."""

from vaelab.sweep.runner import (
    SweepSpec,
    Trial,
    expand_grid,
    parse_grid,
    read_results,
    run_sweep,
)

__all__ = ["SweepSpec", "Trial", "expand_grid", "parse_grid", "read_results", "run_sweep"]
