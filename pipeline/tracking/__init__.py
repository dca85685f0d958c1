"""Every MLflow call of the pipeline, in the stage's own process: where runs
go (store.py), a stage's runs and what it logs (tracker.py), the login
check (access.py) and the logged model's loader (served_model.py)."""

from pipeline.tracking.store import check_reachable, is_server, prepare_experiment, tracking_uri
from pipeline.tracking.tracker import Run, Tracker

__all__ = ["Run", "Tracker", "check_reachable", "is_server", "prepare_experiment", "tracking_uri"]
