"""The login check before a stage reads data (pipeline/tracking/access.py), offline:
a small HTTP server answers as MLflow's authentication would. The real
thing, on PostgreSQL, is tests/test_server.py."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from pipeline import team, tracking
from pipeline.errors import PipelineError
from pipeline.tracking import access

EXPERIMENT = {"experiment_id": "7", "name": "stage-test", "lifecycle_stage": "active",
              "artifact_location": "mlflow-artifacts:/7"}  # fmt: skip


class FakeServer:
    """Answers /health to anyone, and the rest as `answers` says: path ->
    (status, JSON body, or text as MLflow's auth app answers 401 and 403)."""

    def __init__(self, answers: dict[str, tuple[int, dict | str]]) -> None:
        self.answers = answers
        self.asked: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(handler) -> None:
                url = urlparse(handler.path)
                if length := int(handler.headers.get("Content-Length") or 0):
                    handler.rfile.read(length)
                self.asked.append(url.path + "?" + url.query if url.query else url.path)
                status, body = (200, {}) if url.path == "/health" else self.answers.get(
                    url.path, (404, {"error_code": "ENDPOINT_NOT_FOUND", "message": "no"}))  # fmt: skip
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                handler.send_response(status)
                handler.send_header("Content-Length", str(len(data)))
                handler.end_headers()
                handler.wfile.write(data)

            do_POST = do_GET

            def log_message(handler, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.uri = f"http://127.0.0.1:{self.httpd.server_address[1]}"


@pytest.fixture
def serve() -> Iterator:
    started: list[FakeServer] = []

    def start(answers: dict[str, tuple[int, dict | str]]) -> FakeServer:
        server = FakeServer(answers)
        threading.Thread(target=server.httpd.serve_forever, daemon=True).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.httpd.shutdown()


BY_NAME = "/api/2.0/mlflow/experiments/get-by-name"
CREATE = "/api/2.0/mlflow/experiments/create"
UNAUTHENTICATED = (401, "You are not authenticated. Please see https://www.mlflow.org/docs/")
DENIED = (403, "Permission denied")  # MLflow's auth app's answers
MISSING = (404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "none"})


def user(name: str, admin: bool = False) -> tuple[int, dict]:
    return 200, {"user": {"id": 2, "username": name, "is_admin": admin}}


def refused(uri: str) -> str:
    return (f"MLflow tracking server {uri} refused the credentials (401): "
            "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD")  # fmt: skip


def refusal(server: FakeServer) -> str:
    """The line a Tracker for the server fails with."""
    with pytest.raises(PipelineError) as raised:
        tracking.Tracker(server.uri, "stage-test")
    return str(raised.value)


def test_a_refused_login_fails_the_tracker_at_once(serve) -> None:
    server = serve({BY_NAME: UNAUTHENTICATED})
    assert refusal(server) == refused(server.uri)


def test_a_read_only_user_is_refused_naming_user_experiment_and_permission(serve) -> None:
    server = serve({
        BY_NAME: (200, {"experiment": EXPERIMENT}),
        access.CURRENT_USER: user("rob"),
        access.PERMISSION: (200, {"allowed": True, "permission": "READ"}),
    })  # fmt: skip
    assert refusal(server) == (
        f"MLflow tracking server {server.uri} refused user 'rob' write access to experiment "
        "'stage-test' (403; rob has READ on it): ask its admin for EDIT on it "
        "(python -m pipeline.team add rob)"
    )
    assert (
        f"{access.PERMISSION}?username=rob&resource_type=experiment&resource_id=7" in server.asked
    )


@pytest.mark.parametrize("permission", ["EDIT", "MANAGE"])
def test_a_user_who_may_write_gets_a_tracker(serve, permission: str) -> None:
    server = serve({
        BY_NAME: (200, {"experiment": EXPERIMENT}),
        access.CURRENT_USER: user("ana"),
        access.PERMISSION: (200, {"allowed": True, "permission": permission}),
    })  # fmt: skip
    tracking.Tracker(server.uri, "stage-test")
    pass


def test_an_admin_may_write_whatever_permission_the_server_reports(serve) -> None:
    """The server resolves only grants and the default for an admin, but lets them do anything."""
    server = serve({
        BY_NAME: (200, {"experiment": EXPERIMENT}),
        access.CURRENT_USER: user("admin", admin=True),
        access.PERMISSION: (200, {"allowed": True, "permission": "READ"}),
    })  # fmt: skip
    tracking.Tracker(server.uri, "stage-test")
    pass


def test_a_server_without_logins_lets_everybody_write(serve) -> None:
    """No authentication app: its routes are 404, as on a plain `mlflow server`."""
    server = serve({BY_NAME: (200, {"experiment": EXPERIMENT})})
    tracking.Tracker(server.uri, "stage-test")
    pass
    assert access.CURRENT_USER in server.asked


def test_a_new_experiment_is_created_before_the_stage_reads_data(serve) -> None:
    server = serve({BY_NAME: MISSING, CREATE: (200, {"experiment_id": "8"})})
    tracking.Tracker(server.uri, "stage-test")
    assert CREATE in server.asked  # its creator may write to it: no permission to ask
    assert access.CURRENT_USER not in server.asked


def test_a_server_that_refuses_new_experiments_fails_the_tracker_at_once(serve) -> None:
    server = serve({BY_NAME: MISSING, CREATE: DENIED})
    assert refusal(server) == (
        f"MLflow tracking server {server.uri} refused these credentials write access to "
        "experiment 'stage-test' (403): ask its admin for EDIT on it "
        "(python -m pipeline.team add <user>)"
    )


def test_a_403_that_is_not_the_auth_apps_is_shown_as_the_server_wrote_it(serve) -> None:
    """MLflow's own Host-header check also answers 403: not a permission problem."""
    server = serve({BY_NAME: (403, "Invalid Host header - possible DNS rebinding attack")})
    line = refusal(server)
    assert line.startswith("MLflow (check_access): ")
    assert "Invalid Host header" in line


def test_a_local_store_is_never_asked_for_a_login(tmp_path: Path) -> None:
    tracker = tracking.Tracker(f"sqlite:///{tmp_path}/mlflow.db", "stage-test")
    tracker.ready()
    assert not (tmp_path / "mlflow.db").exists()  # asking would have created the store


# Importing MLflow's auth app loads its server, which warns about Starlette.
@pytest.mark.filterwarnings("ignore:starlette.middleware.wsgi is deprecated")
def test_the_permissions_that_may_write_are_mlflows() -> None:
    from mlflow.server.auth.permissions import ALL_PERMISSIONS

    assert {p.name for p in ALL_PERMISSIONS.values() if p.can_update} == access.WRITE


def test_refusals_from_any_later_call_get_the_same_lines(tmp_path: Path) -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.protos import databricks_pb2 as codes

    uri = "https://mlflow.example.org"
    unauthenticated = MlflowException("401 != 200", error_code=codes.UNAUTHENTICATED)
    denied = MlflowException("403 != 200. Response body: 'Permission denied'",
                             error_code=codes.PERMISSION_DENIED)  # fmt: skip
    other = MlflowException("bad value", error_code=codes.INVALID_PARAMETER_VALUE)
    tracker = tracking.Tracker(f"sqlite:///{tmp_path}/mlflow.db", "stage-test")
    tracker.uri = uri  # the lines name the server; nothing here reaches it

    def line(err: Exception, op: str, what: str | None = None) -> str:
        with pytest.raises(PipelineError) as raised, tracker.call(op, what):
            raise err
        return str(raised.value)

    assert line(unauthenticated, "log_epoch") == refused(uri)
    assert line(denied, "start_run", "experiment 'other'") == (
        f"MLflow tracking server {uri} refused these credentials write access to experiment "
        "'other' (403): ask its admin for EDIT on it (python -m pipeline.team add <user>)"
    )
    assert "to experiment 'stage-test' (403)" in line(denied, "log_epoch")
    assert "to the experiment of run abc (403)" in line(denied, "log_to_run",
                                                          "the experiment of run abc")  # fmt: skip
    assert line(other, "log_epoch") == "MLflow (log_epoch): bad value"
    assert line(OSError("disk full"), "log_artifact") == "MLflow (log_artifact): disk full"
    with pytest.raises(RuntimeError, match="export failed"), tracker.call("log_model"):
        raise RuntimeError("export failed")  # a bug: raised as it is, with its traceback


def test_the_new_password_comes_from_stdin_when_it_is_not_a_terminal() -> None:
    assert team.read_password(io.StringIO("s3cret-password\nignored\n")) == "s3cret-password"
    assert team.read_password(io.StringIO("s3cret-password\r\n")) == "s3cret-password"
    with pytest.raises(PipelineError, match="no password on stdin"):
        team.read_password(io.StringIO(""))


def test_users_are_added_only_on_a_server(
    in_tmp_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{in_tmp_repo}/mlflow.db")
    with pytest.raises(PipelineError) as raised:
        team.main(["add", "ana"])
    assert str(raised.value) == (
        f"MLFLOW_TRACKING_URI = sqlite:///{in_tmp_repo}/mlflow.db: users exist only on a "
        "tracking server; set it to the server's http(s):// address"
    )


def test_the_asked_permission_uses_the_query_mlflow_documents(serve) -> None:
    server = serve({
        access.CURRENT_USER: user("a b"),
        access.PERMISSION: (200, {"allowed": False, "permission": "USE"}),
    })  # fmt: skip
    assert access.own_permission(server.uri, "7") == ("a b", "USE")
    asked = urlparse(server.asked[-1])
    assert parse_qs(asked.query) == {"username": ["a b"], "resource_type": ["experiment"],
                                     "resource_id": ["7"]}  # fmt: skip
