"""Add a teammate to the team's tracking server, with EDIT (or READ) on the pipeline's experiment.

Run it as the server's admin, against the server (docs/scale.md):

    MLFLOW_TRACKING_URI=https://mlflow.example.org MLFLOW_TRACKING_USERNAME=admin \\
    MLFLOW_TRACKING_PASSWORD=... python -m pipeline.team add ana [--read-only]

The new user's password is read from the terminal (twice), or from the
first line of stdin when that is not a terminal; it never appears in a
command line. MLflow's authentication has a REST API and a Python client for
users and permissions (mlflow.server.get_app_client("basic-auth")) but no
command: this is that client, doing the three calls a teammate needs - the
user, the experiment named in params.yaml (created if new), the permission.
An existing user keeps their password and gets the permission asked for.
"""

from __future__ import annotations

import getpass
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from pipeline import access, tracking
from pipeline.cli import run_stage, stage_parser
from pipeline.errors import PipelineError
from pipeline.params import load_params


def read_password(stdin: TextIO = sys.stdin) -> str:
    if stdin.isatty():
        first = getpass.getpass("new user's password: ")
        if getpass.getpass("again: ") != first:
            raise PipelineError("the two passwords differ; nothing was changed")
        return first
    line = stdin.readline().rstrip("\r\n")
    if not line:
        raise PipelineError("no password on stdin: give the new user's password as its first line")
    return line


def add_user(uri: str, experiment: str, user: str, password: str, permission: str) -> str:
    """Create `user` (unless they exist) and give them `permission` on
    `experiment` (created if new); return what was done, in words."""
    from mlflow.exceptions import MlflowException

    auth = access.auth_client(uri)
    try:
        try:
            auth.create_user(user, password)
            created = "created"
        except MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            created = "exists (password unchanged)"
        experiment_id = tracking.prepare_experiment(uri, experiment)
        # A grant cannot overwrite an earlier one: revoke it first, if any.
        try:
            auth.revoke_user_permission(user, "experiment", experiment_id)
        except MlflowException as err:
            if err.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
        auth.grant_user_permission(user, "experiment", experiment_id, permission)
    except MlflowException as err:
        if err.error_code == "PERMISSION_DENIED" and access.AUTH_DENIED in err.message:
            raise PipelineError(
                f"MLflow tracking server {uri} refused (403): only an admin adds users; "
                "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to the admin's"
            ) from None
        raise access.explained(err, uri, f"experiment {experiment!r}") or PipelineError(
            f"MLflow tracking server {uri}: {err.message}"
        ) from None
    return (
        f"user {user!r} {created}; {permission} on experiment {experiment!r} "
        f"(id {experiment_id}) at {uri}"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser(__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("add", help="add a user (or change their permission)")
    add.add_argument("user")
    add.add_argument("--read-only", action="store_true", help="READ instead of EDIT")
    args = parser.parse_args(argv)
    experiment = load_params(args.params).tracking.experiment
    uri = tracking.tracking_uri(os.environ, Path.cwd())
    if not tracking.is_server(uri):
        raise PipelineError(
            f"MLFLOW_TRACKING_URI = {uri}: users exist only on a tracking server; "
            "set it to the server's http(s):// address"
        )
    tracking.check_reachable(uri)
    password = read_password()
    print(add_user(uri, experiment, args.user, password, "READ" if args.read_only else "EDIT"))


if __name__ == "__main__":
    run_stage(main)
