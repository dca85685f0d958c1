"""Whether a tracking server lets this user write to the experiment.

MLflow's authentication (`mlflow server --app-name basic-auth`) answers
/health to anyone, so reaching the server says nothing about credentials: a
refusal would show only at the first API call, after the stage had read its
data and perhaps trained for minutes. So the Tracker asks first,
before the stage reads anything, with MLflow's own client (every way MLflow
authenticates counts: the two variables, ~/.mlflow/credentials, a token):

- the experiment by name: 401 means the credentials were refused, 403 that
  the user may not even read it;
- the user's own permission on it (the auth app's "users/current" and
  "users/permissions/get", which resolve it as a real request would): READ
  alone cannot start runs or log to them.

A server without MLflow's authentication has neither endpoint (404) and no
per-user permissions to check, and an admin may do anything. The same two
lines also explain a 401 or 403 from any later call (a password changed
mid-run, runs recorded in another experiment). A 403 that is not the auth
app's (MLflow's own Host-header check, say) is shown as the server wrote it.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

from pipeline.errors import PipelineError

if TYPE_CHECKING:
    from mlflow.exceptions import MlflowException
    from mlflow.server.auth.client import AuthServiceClient
    from requests import Response

# The auth app's routes (mlflow.server.auth.routes), and the permissions
# that may start and update runs (those whose `can_update` is true in
# mlflow.server.auth.permissions: importing that loads the whole auth app,
# ~3 s the stage would wait for; tests/test_access.py checks the two agree).
CURRENT_USER = "/api/2.0/mlflow/users/current"
PERMISSION = "/api/3.0/mlflow/users/permissions/get"
WRITE = frozenset({"EDIT", "MANAGE"})
AUTH_DENIED = "Permission denied"  # the body of the auth app's 403 (make_forbidden_response)


def credentials_refused(uri: str) -> PipelineError:
    return PipelineError(
        f"MLflow tracking server {uri} refused the credentials (401): "
        "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
    )


def experiment_refused(
    uri: str, what: str, user: str | None = None, permission: str | None = None
) -> PipelineError:
    """`what`: "experiment 'name'", or how else the experiment is known."""
    who = f"user {user!r}" if user else "these credentials"
    has = f"; {user} has {permission} on it" if user and permission else ""
    return PipelineError(
        f"MLflow tracking server {uri} refused {who} write access to {what} (403{has}): "
        f"ask its admin for EDIT on it (python -m pipeline.team add {user or '<user>'})"
    )


def explained(err: MlflowException, uri: str, what: str) -> PipelineError | None:
    """Our line for a refusal (401, or the auth app's 403) from any MLflow call
    about `what` (see experiment_refused); None for other errors."""
    if err.error_code == "UNAUTHENTICATED":
        return credentials_refused(uri)
    if err.error_code == "PERMISSION_DENIED" and AUTH_DENIED in err.message:
        return experiment_refused(uri, what)
    return None


def check_access(uri: str, experiment: str) -> str | None:
    """Raise PipelineError unless the server at `uri` lets these credentials
    start runs in `experiment`; return its id, or None when it is new (left
    to prepare_experiment: its creator may write to it). Imports MLflow."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        found = MlflowClient(uri).get_experiment_by_name(experiment)
        if found is None:
            return None
        granted = own_permission(uri, found.experiment_id)
    except MlflowException as err:
        raise explained(err, uri, f"experiment {experiment!r}") or err from None
    if granted is not None and granted[1] not in WRITE:
        raise experiment_refused(uri, f"experiment {experiment!r}", *granted)
    return found.experiment_id


def own_permission(uri: str, experiment_id: str) -> tuple[str, str] | None:
    """(user, their permission's name) on the experiment, as the server
    resolves it; None where the server has no per-user permissions or the
    user is an admin (whom the server lets do anything, whatever the
    permission it reports: it resolves only grants and the default)."""
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    def get(endpoint: str, **params: str) -> Response:
        answer = http_request(get_default_host_creds(uri), endpoint, "GET", params=params)
        if answer.status_code == 401:
            raise credentials_refused(uri)
        return answer

    current = get(CURRENT_USER)
    if current.status_code == 404:  # no authentication app: everybody may write
        return None
    current.raise_for_status()
    user = current.json()["user"]
    if user["is_admin"]:
        return None
    name = user["username"]
    granted = get(PERMISSION, username=name, resource_type="experiment", resource_id=experiment_id)
    granted.raise_for_status()
    return name, granted.json()["permission"]


def auth_client(uri: str) -> AuthServiceClient:
    """MLflow's client for users and permissions (mlflow.server.auth.client)."""
    # Loading it imports MLflow's server, which warns about Starlette internals.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from mlflow.server import get_app_client

        return get_app_client("basic-auth", tracking_uri=uri)
