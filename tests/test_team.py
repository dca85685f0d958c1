"""`python -m pipeline.team add` (pipeline/team.py) against a fake of MLflow's
client for users and permissions, offline: a failure at any step leaves a
user with what they had, and says what that is. The last test changes a real
user's permission on the real server of tests/test_server.py."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import yaml
from mlflow.exceptions import MlflowException
from mlflow.protos import databricks_pb2

from pipeline import team, tracking
from pipeline.errors import PipelineError
from pipeline.tracking import access

from .conftest import tiny_params

# test_server's real server (its fixtures, for the last test).
from .test_server import as_admin, experiment_id, postgres, team_add, tracking_server  # noqa: F401

with warnings.catch_warnings():  # MLflow's server package warns about Starlette internals
    warnings.simplefilter("ignore")
    from mlflow.server.auth.entities import Role, RolePermission, User

URI = "http://mlflow.test"
EXPERIMENT, EXPERIMENT_ID = "stage-test", "7"
# The names mlflow.server.auth.permissions knows (importing it loads the whole auth app).
VALID = frozenset({"READ", "USE", "EDIT", "MANAGE", "NO_PERMISSIONS", "DENY"})


def mlflow_error(code: str, message: str = "boom") -> MlflowException:
    """What MLflow's client raises for an error answer with this code."""
    error = MlflowException(message, error_code=getattr(databricks_pb2, code))
    assert error.error_code == code
    return error


class FakeAuth:
    """MLflow's AuthServiceClient as its server answers, from memory: a user's
    own grants are the rows of their `__user_<id>__` role, a grant refuses to
    overwrite one, a revoke removes it. The call named `fail_at` raises `error`
    and changes nothing, as a failed request to MLflow does."""

    def __init__(self, grants: dict[str, str | None], fail_at: str = "", error=None) -> None:
        self.ids = {user: index for index, user in enumerate(grants, start=2)}
        self.rows = {user: (100 + i, p) for i, (user, p) in enumerate(grants.items()) if p}
        self.fail_at, self.error = fail_at, error or mlflow_error("INTERNAL_ERROR")
        self.calls: list[str] = []

    def call(self, name: str) -> None:
        self.calls.append(name)
        if name == self.fail_at:
            raise self.error

    def user(self, username: str) -> User:
        if username not in self.ids:
            raise mlflow_error("RESOURCE_DOES_NOT_EXIST", f"User {username!r} not found")
        return User(self.ids[username], username, "REDACTED", is_admin=False)

    def create_user(self, username: str, password: str) -> User:
        self.call("create_user")
        if username in self.ids:
            raise mlflow_error("RESOURCE_ALREADY_EXISTS", f"User '{username}' already exists")
        self.ids[username] = max(self.ids.values(), default=1) + 1
        return self.user(username)

    def get_user(self, username: str) -> User:
        self.call("get_user")
        return self.user(username)

    def list_user_roles(self, username: str) -> list[Role]:
        self.call("list_user_roles")
        user_id = self.user(username).id
        # A team role also grants on the experiment: not the user's own grant.
        roles = [Role(1, "team", "default", permissions=[
            RolePermission(1, 1, "experiment", EXPERIMENT_ID, "MANAGE")])]  # fmt: skip
        if username in self.rows:
            row_id, permission = self.rows[username]
            roles.append(Role(50 + user_id, f"__user_{user_id}__", "default", permissions=[
                RolePermission(9, 50 + user_id, "experiment", "other", "READ"),
                RolePermission(row_id, 50 + user_id, "experiment", EXPERIMENT_ID, permission),
            ]))  # fmt: skip
        return roles

    def grant_user_permission(self, username: str, kind: str, id_: str, permission: str) -> None:
        self.call("grant_user_permission")
        self.user(username)
        if username in self.rows:
            raise mlflow_error("RESOURCE_ALREADY_EXISTS", "Permission ... already exists.")
        if permission not in VALID:
            raise mlflow_error("INVALID_PARAMETER_VALUE", f"Invalid permission '{permission}'")
        self.rows[username] = (200 + len(self.calls), permission)

    def revoke_user_permission(self, username: str, kind: str, id_: str) -> None:
        self.call("revoke_user_permission")
        if self.rows.pop(username, None) is None:
            raise mlflow_error("RESOURCE_DOES_NOT_EXIST", "Permission ... not found.")

    def update_role_permission(self, role_permission_id: int, permission: str) -> None:
        self.call("update_role_permission")
        (user,) = [u for u, (row_id, _) in self.rows.items() if row_id == role_permission_id]
        if permission not in VALID:
            raise mlflow_error("INVALID_PARAMETER_VALUE", f"Invalid permission '{permission}'")
        self.rows[user] = (role_permission_id, permission)

    def permission(self, username: str) -> str | None:
        return self.rows[username][1] if username in self.rows else None


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch):
    """Install a FakeAuth (users -> their grant on the experiment) as the server."""

    def install(grants: dict[str, str | None], **failure) -> FakeAuth:
        fake = FakeAuth(grants, **failure)

        def prepare_experiment(uri: str, name: str) -> str:  # fails as tracking's does
            assert (uri, name) == (URI, EXPERIMENT)
            try:
                fake.call("prepare_experiment")
            except MlflowException as err:
                raise PipelineError(f"MLflow store {uri}: {err.message}") from None
            return EXPERIMENT_ID

        monkeypatch.setattr(access, "auth_client", lambda uri: fake)
        monkeypatch.setattr(tracking, "prepare_experiment", prepare_experiment)
        return fake

    return install


def add(user: str, permission: str = "EDIT") -> str:
    return team.add_user(URI, EXPERIMENT, user, "s3cret-password", permission)


def failure(user: str, permission: str = "EDIT") -> str:
    with pytest.raises(PipelineError) as raised:
        add(user, permission)
    assert len(raised.value.lines) == 1 and "\n" not in raised.value.lines[0]
    return raised.value.lines[0]


def done(user: str, how: str, permission: str) -> str:
    return f"user {user!r} {how}; {permission} on experiment {EXPERIMENT!r} (id 7) at {URI}"


EXISTS = "exists (password unchanged)"


def test_a_new_user_is_created_with_edit(server) -> None:
    fake = server({"rob": "READ"})
    assert add("ana") == done("ana", "created", "EDIT")
    assert (fake.permission("ana"), fake.permission("rob")) == ("EDIT", "READ")
    assert fake.calls == ["create_user", "prepare_experiment", "grant_user_permission"]


@pytest.mark.parametrize(
    ("had", "asked"), [("READ", "EDIT"), ("EDIT", "READ"), ("MANAGE", "EDIT"), ("DENY", "READ")]
)
def test_an_existing_grant_is_changed_in_place(server, had: str, asked: str) -> None:
    fake = server({"rob": had})
    assert add("rob", asked) == done("rob", EXISTS, asked)
    assert fake.rows["rob"] == (100, asked)  # the same row: never a moment without it
    assert "revoke_user_permission" not in fake.calls
    assert fake.calls[-1] == "update_role_permission"


def test_a_user_without_a_grant_of_their_own_is_granted_one(server) -> None:
    fake = server({"cy": None})
    assert add("cy", "READ") == done("cy", EXISTS, "READ")
    assert fake.permission("cy") == "READ"
    assert fake.calls[-1] == "grant_user_permission"


def test_a_user_who_has_the_permission_asked_for_is_left_alone(server) -> None:
    fake = server({"ana": "EDIT"})
    assert add("ana") == done("ana", EXISTS, "EDIT")
    assert fake.calls == ["create_user", "get_user", "prepare_experiment", "list_user_roles"]


UNCHANGED = f"MLflow tracking server {URI}: boom"
ROB_KEEPS_READ = "user 'rob' keeps READ on experiment 'stage-test'"


@pytest.mark.parametrize(
    ("step", "line"),
    [
        ("create_user", UNCHANGED),
        ("get_user", UNCHANGED),
        ("prepare_experiment", f"MLflow store {URI}: boom"),
        ("list_user_roles", UNCHANGED),
        ("update_role_permission", f"{UNCHANGED}; {ROB_KEEPS_READ}"),
    ],
)
def test_a_failure_at_any_step_leaves_the_permission_a_user_had(server, step, line) -> None:
    fake = server({"rob": "READ"}, fail_at=step)
    assert failure("rob") == line
    assert fake.rows["rob"] == (100, "READ")
    assert fake.calls[-1] == step


def test_a_permission_mlflow_does_not_know_leaves_the_old_one(server) -> None:
    fake = server({"rob": "READ"})
    assert failure("rob", "WRITE") == (
        f"MLflow tracking server {URI}: Invalid permission 'WRITE'; {ROB_KEEPS_READ}"
    )
    assert fake.permission("rob") == "READ"


def test_a_failed_grant_to_a_user_without_one_says_they_still_have_none(server) -> None:
    fake = server({"cy": None}, fail_at="grant_user_permission")
    assert failure("cy") == f"{UNCHANGED}; user 'cy' still has no grant on experiment 'stage-test'"
    assert fake.permission("cy") is None


@pytest.mark.parametrize(
    ("step", "error"),
    [("prepare_experiment", f"MLflow store {URI}: boom"), ("grant_user_permission", UNCHANGED)],
)
def test_a_new_user_left_without_a_grant_is_told_and_running_again_gives_it(
    server, step: str, error: str
) -> None:
    fake = server({}, fail_at=step)
    assert failure("ana") == (
        f"{error}; user 'ana' was created, with no grant on experiment 'stage-test': "
        "run the same command again to give it"
    )
    assert "ana" in fake.ids and fake.permission("ana") is None
    fake.fail_at = ""
    assert add("ana") == done("ana", EXISTS, "EDIT")
    assert fake.permission("ana") == "EDIT"


def test_refusals_get_their_own_lines(server) -> None:
    server({"rob": "READ"}, fail_at="create_user", error=mlflow_error("PERMISSION_DENIED", "Permission denied"))  # fmt: skip
    assert failure("rob") == (
        f"MLflow tracking server {URI} refused (403): only an admin adds users; "
        "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to the admin's"
    )
    server({"rob": "READ"}, fail_at="update_role_permission", error=mlflow_error("UNAUTHENTICATED"))  # fmt: skip
    assert failure("rob") == (
        f"MLflow tracking server {URI} refused the credentials (401): set MLFLOW_TRACKING_USERNAME "
        f"and MLFLOW_TRACKING_PASSWORD; {ROB_KEEPS_READ}"
    )


def test_a_page_that_is_not_mlflows_answer_is_one_line(server) -> None:
    page = "API request to endpoint /api/3.0/x failed with error code 502 != 200. Response body: '<html>\n<h1>Bad Gateway</h1>\n</html>'"  # fmt: skip
    server({"rob": "EDIT"}, fail_at="update_role_permission", error=mlflow_error("TEMPORARILY_UNAVAILABLE", page))  # fmt: skip
    assert failure("rob", "READ") == (
        f"MLflow tracking server {URI}: API request to endpoint /api/3.0/x failed with error code "
        "502 != 200. Response body: '<html> <h1>Bad Gateway</h1> </html>'; "
        "user 'rob' keeps EDIT on experiment 'stage-test'"
    )


def test_the_command_fails_with_the_line_and_exit_status_1(
    server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = server({"rob": "EDIT"}, fail_at="update_role_permission")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params(tmp_path)))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", URI)
    monkeypatch.setattr(tracking, "check_reachable", lambda uri: None)
    monkeypatch.setattr(team, "read_password", lambda: "s3cret-password")
    with pytest.raises(PipelineError) as raised:
        team.main(["add", "rob", "--read-only"])
    assert raised.value.exit_code == 1
    assert raised.value.lines == (f"{UNCHANGED}; user 'rob' keeps EDIT on experiment 'stage-test'",)
    assert fake.permission("rob") == "EDIT"


def test_only_the_users_own_grant_on_the_experiment_is_theirs_to_change() -> None:
    roles = [Role.from_json(r) for r in [  # as the server sends them (users/roles/list)
        {"id": 1, "name": "__user_3__", "workspace": "default", "permissions": [
            {"id": 5, "role_id": 1, "resource_type": "experiment", "resource_pattern": "7", "permission": "MANAGE"}]},
        {"id": 2, "name": "team", "workspace": "default", "permissions": [
            {"id": 6, "role_id": 2, "resource_type": "experiment", "resource_pattern": "7", "permission": "READ"}]},
        {"id": 4, "name": "__user_4__", "workspace": "default", "permissions": [
            {"id": 8, "role_id": 4, "resource_type": "registered_model", "resource_pattern": "7", "permission": "EDIT"},
            {"id": 7, "role_id": 4, "resource_type": "experiment", "resource_pattern": "7", "permission": "READ"}]},
    ]]  # fmt: skip
    own = team.own_grant(roles, 4, "7")
    assert (own.id, own.permission) == (7, "READ")
    assert team.own_grant(roles, 3, "8") is None
    assert team.own_grant(roles, 2, "7") is None  # role id 2 is not user 2's own


@pytest.mark.postgres
def test_a_real_users_permission_changes_in_place_both_ways(
    tracking_server,  # noqa: F811 (test_server's fixtures, imported above)
    as_admin,  # noqa: F811
    tmp_path: Path,
) -> None:
    """`ana` has EDIT (docs/scale.md's lines): READ, then EDIT again, on the same grant."""
    experiment = experiment_id(tracking_server.uri)
    seen = []
    for args in (["--read-only"], []):
        changed = team_add(tracking_server, tmp_path, "ana", *args, password="not-used-ana-exists")
        assert changed.returncode == 0, changed.stderr
        permission = as_admin.get_user_permission("ana", "experiment", experiment).permission
        roles = as_admin.list_user_roles("ana")
        row = team.own_grant(roles, as_admin.get_user("ana").id, experiment)
        seen.append((permission, row.permission, row.id))
    assert [s[:2] for s in seen] == [("READ", "READ"), ("EDIT", "EDIT")]
    assert seen[0][2] == seen[1][2]  # updated in place, not revoked and granted again
