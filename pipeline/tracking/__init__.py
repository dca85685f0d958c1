"""Every MLflow call of the pipeline: where runs go (store.py), and the
Tracker (tracker.py) whose helper process (helper.py) makes a stage's calls
on the second core while the stage computes on the first; the login check
(access.py) and the logged model's loader (served_model.py)."""

from pipeline.tracking.store import (
    check_reachable,
    git_commit,
    is_server,
    pipeline_run_id,
    prepare_experiment,
    recorded_parent,
    recorded_runs,
    run_tags,
    tracking_uri,
)
from pipeline.tracking.tracker import RemoteRun, Reply, Tracker

__all__ = [
    "RemoteRun",
    "Reply",
    "Tracker",
    "check_reachable",
    "git_commit",
    "is_server",
    "pipeline_run_id",
    "prepare_experiment",
    "recorded_parent",
    "recorded_runs",
    "run_tags",
    "tracking_uri",
]
