"""Add a teammate to the team's tracking server, with EDIT (or READ) on the pipeline's experiment.

Run it as the server's admin, against the server (docs/scale.md):

    MLFLOW_TRACKING_URI=https://mlflow.example.org MLFLOW_TRACKING_USERNAME=admin \\
    MLFLOW_TRACKING_PASSWORD=... python -m pipeline.team add ana [--read-only]

The new user's password is read from the terminal (twice), or from the
first line of stdin when that is not a terminal; it never appears in a
command line. MLflow's authentication has a REST API and a Python client for
users and permissions (mlflow.server.get_app_client("basic-auth")) but no
command: this is that client, doing the calls a teammate needs - the user,
the experiment named in params.yaml (created if new), the permission.
An existing user keeps their password and gets the permission asked for.

A failure never leaves a user with less than they had. MLflow 3.17 keeps a
user's own grants as the permissions of a role of their own, `__user_<id>__`
(mlflow.server.auth.routes); its per-user calls grant and revoke but cannot
change a grant, and a revoke followed by a failed grant would leave nothing.
So an existing grant is changed in place, its row of that role updated in one
call (update_role_permission) that happens or not; only a user without one
gets a grant. A user this command creates is left without a grant when a
later step fails: the error says so, and running it again gives the grant.
"""

from __future__ import annotations

import getpass
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from pipeline import tracking
from pipeline.cli import run_stage, stage_parser
from pipeline.errors import PipelineError
from pipeline.params import load_params
from pipeline.tracking import access

if TYPE_CHECKING:
    from mlflow.exceptions import MlflowException
    from mlflow.server.auth.entities import Role, RolePermission


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


def own_grant(roles: Iterable[Role], user_id: int, experiment_id: str) -> RolePermission | None:
    """The user's own grant on the experiment (a row of their `__user_<id>__`
    role, where MLflow's grant_user_permission writes it), None if none.
    Grants through other roles are the admin's to manage, not this command's."""
    for role in roles:
        if role.name == f"__user_{user_id}__":
            for row in role.permissions:
                if (row.resource_type, row.resource_pattern) == ("experiment", experiment_id):
                    return row
    return None


def failure_line(err: MlflowException, uri: str, experiment: str) -> str:
    if err.error_code == "PERMISSION_DENIED" and access.AUTH_DENIED in err.message:
        return (
            f"MLflow tracking server {uri} refused (403): only an admin adds users; "
            "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to the admin's"
        )
    if explained := access.explained(err, uri, f"experiment {experiment!r}"):
        return str(explained)
    # A body that is not MLflow's JSON (a proxy's HTML page) comes whole: make it one line.
    return f"MLflow tracking server {uri}: {' '.join(err.message.split())}"


def add_user(uri: str, experiment: str, user: str, password: str, permission: str) -> str:
    """Create `user` (unless they exist) and give them `permission` on
    `experiment` (created if new); return what was done, in words. On
    failure the user keeps what they had, and the error says what that is."""
    from mlflow.exceptions import MlflowException

    auth = access.auth_client(uri)
    left = ""  # what a failure leaves, once there is something to say
    try:
        try:
            auth.create_user(user, password)
            existing = None
            left = (
                f"user {user!r} was created, with no grant on experiment {experiment!r}: "
                "run the same command again to give it"
            )
        except MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            existing = auth.get_user(user)
        experiment_id = tracking.prepare_experiment(uri, experiment)
        had = None
        if existing:
            had = own_grant(auth.list_user_roles(user), existing.id, experiment_id)
            kept = f"keeps {had.permission}" if had else "still has no grant"
            left = f"user {user!r} {kept} on experiment {experiment!r}"
        if had is None:
            auth.grant_user_permission(user, "experiment", experiment_id, permission)
        elif had.permission != permission:
            auth.update_role_permission(had.id, permission)  # in place: no moment without it
    except (MlflowException, PipelineError) as err:
        failure = str(err) if isinstance(err, PipelineError) else failure_line(err, uri, experiment)
        raise PipelineError(f"{failure}; {left}" if left else failure) from None
    return (
        f"user {user!r} {'exists (password unchanged)' if existing else 'created'}; "
        f"{permission} on experiment {experiment!r} (id {experiment_id}) at {uri}"
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
