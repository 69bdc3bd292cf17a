"""Measurements over many checkpoints: loading, the result store, executors, trajectories, the monitor."""

from slt.sweeps.checkpoints import (
    CheckpointError,
    UnsafeCheckpointWarning,
    load_state_dict,
    resolve_checkpoints,
)
from slt.sweeps.executors import RayExecutor, process_pool
from slt.sweeps.monitor import LLCMonitor
from slt.sweeps.store import ResultStore
from slt.sweeps.trajectory import CheckpointFailedWarning, Trajectory, analyze_checkpoints

__all__ = [
    "analyze_checkpoints",
    "Trajectory",
    "ResultStore",
    "LLCMonitor",
    "RayExecutor",
    "process_pool",
    "resolve_checkpoints",
    "load_state_dict",
    "CheckpointError",
    "CheckpointFailedWarning",
    "UnsafeCheckpointWarning",
]
