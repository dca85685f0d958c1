"""A team's tracking server, started by docs/scale.md's own commands: MLflow
with its authentication, runs and logins on PostgreSQL, artifacts served by it.

The test starts its own PostgreSQL cluster in a temporary folder on a free
loopback port (Debian's postgresql package; .ci/run installs it), then runs
the docs' server block and the docs' `python -m pipeline.team add` lines,
with the cluster, a loopback port and a temporary folder in place of the
docs' `dbhost:5432`, `127.0.0.1:5000` and `/srv/mlflow`. `ana` (EDIT) trains
against it; `rob` (READ) reads everything back; logins that are missing,
wrong or read-only are refused, through the REST API and by every stage.
"""

from __future__ import annotations

import base64
import contextlib
import glob
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from pipeline import paths
from pipeline.data.mnist import load_split, scale_images
from pipeline.nn.checkpoint import load_checkpoint

from .conftest import REPO, free_port, run_stages, tiny_params

pytestmark = pytest.mark.postgres

DOCS = REPO / "docs" / "scale.md"
DOCS_URI = "https://mlflow.example.org"
EXPERIMENT = "stage-test"  # tiny_params'
BIN = str(Path(sys.executable).parent)  # mlflow, as the project's environment has it


def postgres_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or [shutil.which(name)]
    if not found[-1]:
        pytest.fail(f"PostgreSQL's {name} not found: apt-get install postgresql (as .ci/run does)"
                    " or deselect with -m 'not postgres'")  # fmt: skip
    return found[-1]


def wait_until(ready, what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < deadline, f"{what} did not come up in {timeout} s"
        time.sleep(0.5)


def as_postgres_user() -> list[str]:
    """PostgreSQL refuses to run as root: CI runs as root, so drop to `postgres`."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def docs_block(containing: str) -> str:
    """The one shell block of docs/scale.md that contains `containing`."""
    blocks = re.findall(r"```sh\n(.*?)```", DOCS.read_text(), re.DOTALL)
    found = [b for b in blocks if containing in b]
    assert len(found) == 1, f"docs/scale.md: {len(found)} shell blocks contain {containing!r}"
    return found[0]


@pytest.fixture(scope="module")
def postgres() -> Iterator[int]:
    """A throwaway PostgreSQL server on 127.0.0.1 (user `mlflow`, trusted); yields its port."""
    folder = Path(tempfile.mkdtemp(prefix="pg-"))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    data, port = folder / "data", free_port()
    run = as_postgres_user()
    subprocess.run([*run, postgres_bin("initdb"), "-D", str(data), "-U", "mlflow", "--auth=trust",
                    "-E", "UTF8"], check=True, capture_output=True)  # fmt: skip
    server = subprocess.Popen(
        [*run, postgres_bin("postgres"), "-D", str(data), "-p", str(port), "-k", str(folder),
         "-c", "listen_addresses=127.0.0.1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        import psycopg  # the [server] extra's driver, as mlflow server uses it

        def accepting() -> bool:
            try:
                psycopg.connect(f"postgresql://mlflow@127.0.0.1:{port}/postgres").close()
                return True
            except psycopg.OperationalError:
                return False

        wait_until(accepting, "PostgreSQL")
        yield port
    finally:
        os.killpg(server.pid, signal.SIGINT)  # PostgreSQL's "fast shutdown"
        server.wait(timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


@dataclass
class Server:
    uri: str
    admin_password: str
    passwords: dict[str, str]  # the teammates'
    postgres_port: int
    folder: Path  # the docs' /srv/mlflow

    def login(self, user: str | None, password: str | None = None) -> dict[str, str]:
        """The environment variables of a client logged in as `user`."""
        if user is None:
            return {}
        return {"MLFLOW_TRACKING_USERNAME": user,
                "MLFLOW_TRACKING_PASSWORD": password or self.passwords[user]}  # fmt: skip


def client_env(**variables: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    return env | variables


@pytest.fixture(scope="module")
def tracking_server(postgres: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """docs/scale.md's server block, then its `pipeline.team add` lines (as the admin)."""
    folder, port = tmp_path_factory.mktemp("srv-mlflow"), free_port()
    commands = (
        docs_block("--app-name basic-auth")
        .replace("dbhost", "127.0.0.1")
        .replace("5432", str(postgres))
        .replace("/srv/mlflow", str(folder))
        .replace("5000", str(port))
    )
    admin_password = secrets.token_urlsafe(16)
    env = client_env(
        # The secrets come from the environment: the docs' block holds none.
        MLFLOW_AUTH_ADMIN_PASSWORD=admin_password,
        MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_hex(32),
        PATH=os.pathsep.join([BIN, str(Path(postgres_bin("createdb")).parent), os.environ["PATH"]]),
    )
    log = (folder.parent / "mlflow-server.log").open("w")
    server = subprocess.Popen(["bash", "-c", commands], cwd=folder, env=env, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    uri = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert server.poll() is None, Path(log.name).read_text()[-3000:]
        with contextlib.suppress(OSError):
            return urllib.request.urlopen(f"{uri}/health", timeout=2).status == 200
        return False

    try:
        wait_until(healthy, "mlflow server", timeout=120)
        running = Server(uri, admin_password, {}, postgres, folder)
        add_teammates(running, tmp_path_factory.mktemp("admin"))
        yield running
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
        log.close()


def add_teammates(server: Server, work: Path) -> None:
    """Run the docs' `python -m pipeline.team add` lines, each with a new password on stdin."""
    block = docs_block("python -m pipeline.team add")
    assert f"export MLFLOW_TRACKING_URI={DOCS_URI}" in block
    assert 'MLFLOW_TRACKING_USERNAME=admin MLFLOW_TRACKING_PASSWORD="$MLFLOW_AUTH_ADMIN_PASSWORD"' in block  # fmt: skip
    (work / "params.yaml").write_text(yaml.safe_dump(tiny_params(work)))
    env = client_env(MLFLOW_TRACKING_URI=server.uri, **server.login("admin", server.admin_password))
    lines = [line.split("#")[0] for line in block.splitlines() if "pipeline.team add" in line]
    assert len(lines) == 2
    for line in lines:
        command = shlex.split(line)
        user = command[4]
        server.passwords[user] = secrets.token_urlsafe(16)
        done = subprocess.run([sys.executable, *command[1:]], cwd=work, env=env,
                              input=server.passwords[user] + "\n", capture_output=True, text=True)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert f"user {user!r} created" in done.stdout


@pytest.fixture(scope="module")
def trained(tracking_server: Server, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("server-run")
    run_stages(root, ["train_bn", "train_nobn"], tracking_uri=tracking_server.uri,
               env=tracking_server.login("ana"))  # fmt: skip
    return root


@pytest.fixture
def as_rob(tracking_server: Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """The read-only teammate's login, for the MLflow client in this process."""
    for name, value in tracking_server.login("rob").items():
        monkeypatch.setenv(name, value)
    return tracking_server.uri


def runs_of(root: Path, variant: str) -> dict:
    return json.loads((root / paths.MODELS_DIR / variant / paths.RUNS_NAME).read_text())


def test_runs_are_on_the_server(trained: Path, as_rob: str) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(as_rob)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == [
        "bn", "bn-seed0", "bn-seed1", "nobn", "nobn-seed0", "nobn-seed1",
    ]  # fmt: skip
    assert all(r.info.status == "FINISHED" for r in runs)
    assert {r.info.user_id for r in runs} == {"ana"}  # the login, not the machine's account
    assert runs_of(trained, "bn")["tracking_uri"] == as_rob
    run_id = runs_of(trained, "nobn")["runs"]["1"]["run_id"]
    history = client.get_metric_history(run_id, "test_accuracy")
    assert [m.step for m in history] == [1, 2]
    assert client.get_run(run_id).info.artifact_uri.startswith("mlflow-artifacts:")


def test_checkpoints_come_back_through_the_server(
    trained: Path, as_rob: str, tmp_path: Path
) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(as_rob)
    run_id = runs_of(trained, "bn")["runs"]["0"]["run_id"]
    names = [a.path for a in client.list_artifacts(run_id, "checkpoints")]
    assert names == ["checkpoints/epoch_001.pt", "checkpoints/epoch_002.pt"]
    fetched = client.download_artifacts(run_id, "checkpoints/epoch_002.pt", str(tmp_path))
    served, _ = load_checkpoint(Path(fetched))
    local, _ = load_checkpoint(trained / paths.MODELS_DIR / "bn" / "seed0.pt")
    for a, b in zip(served.state_dict().values(), local.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_logged_model_loads_from_the_server(trained: Path, as_rob: str) -> None:
    import mlflow
    import mlflow.pytorch

    mlflow.set_tracking_uri(as_rob)
    logged = mlflow.pytorch.load_model(runs_of(trained, "nobn")["runs"]["0"]["model_uri"])
    local, _ = load_checkpoint(trained / paths.MODELS_DIR / "nobn" / "seed0.pt")
    images, _ = load_split(trained / paths.RAW_DIR, train=False)
    x = scale_images(images[:8])
    with torch.no_grad():
        assert torch.equal(logged(x).argmax(1), local(x).argmax(1))


def rest(
    server: Server,
    endpoint: str,
    login: tuple[str, str] | None,
    body: dict | None = None,
    host: str | None = None,
) -> tuple[int, str]:
    """(status, text) of a REST call, as any HTTP client would make it; `host`
    is the Host header a proxy would pass on."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{server.uri}{endpoint}", data=data)
    request.add_header("Content-Type", "application/json")
    if host:
        request.add_header("Host", host)
    if login:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(login).encode()).decode())  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_the_server_asks_every_api_call_for_a_valid_login(
    trained: Path, tracking_server: Server
) -> None:
    by_name = f"/api/2.0/mlflow/experiments/get-by-name?experiment_name={EXPERIMENT}"
    rob = ("rob", tracking_server.passwords["rob"])
    assert rest(tracking_server, "/health", None)[0] == 200  # open: reachable says nothing
    assert rest(tracking_server, by_name, None)[0] == 401
    assert rest(tracking_server, by_name, ("rob", "not-" + rob[1]))[0] == 401
    assert rest(tracking_server, by_name, ("nobody", rob[1]))[0] == 401
    status, text = rest(tracking_server, by_name, rob)
    assert status == 200
    experiment_id = json.loads(text)["experiment"]["experiment_id"]
    create = "/api/2.0/mlflow/runs/create"
    assert rest(tracking_server, create, rob, {"experiment_id": experiment_id})[0] == 403
    assert rest(tracking_server, create, None, {"experiment_id": experiment_id})[0] == 401


def test_requests_through_the_proxys_name_are_let_in_and_others_not(
    tracking_server: Server,
) -> None:
    """Caddy passes the client's Host header on: the docs' --allowed-hosts must hold its name."""
    by_name = "/api/2.0/mlflow/experiments/get-by-name?experiment_name=Default"
    admin = ("admin", tracking_server.admin_password)
    assert rest(tracking_server, by_name, admin, host="mlflow.example.org")[0] == 200
    status, text = rest(tracking_server, by_name, admin, host="rebound.example.com")
    assert (status, "Invalid Host header" in text) == (403, True)


def test_logins_are_kept_in_postgresql_not_a_stray_file(tracking_server: Server) -> None:
    import psycopg

    address = f"postgresql://mlflow@127.0.0.1:{tracking_server.postgres_port}/mlflow_auth"
    with psycopg.connect(address) as db:
        users = dict(db.execute("SELECT username, is_admin FROM users").fetchall())
    assert (users["admin"], users["ana"], users["rob"]) == (True, False, False)
    assert not list(tracking_server.folder.rglob("*.db"))  # e.g. MLflow's default basic_auth.db


def refused_401(uri: str) -> str:
    return (f"MLflow tracking server {uri} refused the credentials (401): "
            "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD")  # fmt: skip


STAGES = {"train": ["--variant", "bn"], "evaluate": [], "visualize": []}


@pytest.mark.parametrize("stage", sorted(STAGES))
@pytest.mark.parametrize("login", ["anonymous", "wrong password", "read-only"])
def test_a_stage_without_a_login_that_may_write_stops_before_reading_data(
    trained: Path, tracking_server: Server, tmp_path: Path, stage: str, login: str
) -> None:
    """In a folder with nothing but params.yaml, the refusal is the only line:
    any data read first would fail differently. Nothing is written, no run starts."""
    from mlflow.tracking import MlflowClient

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params(tmp_path)))
    logins = {
        "anonymous": {},
        "wrong password": tracking_server.login("ana", "not-" + tracking_server.passwords["ana"]),
        "read-only": tracking_server.login("rob"),
    }
    expected = refused_401(tracking_server.uri) if login != "read-only" else (
        f"MLflow tracking server {tracking_server.uri} refused user 'rob' write access to "
        f"experiment '{EXPERIMENT}' (403; rob has READ on it): ask its admin for EDIT on it "
        "(python -m pipeline.team add rob)"
    )  # fmt: skip
    admin = MlflowClient(tracking_server.uri)
    with pytest.MonkeyPatch.context() as mp:
        for name, value in tracking_server.login("admin", tracking_server.admin_password).items():
            mp.setenv(name, value)
        experiment_id = admin.get_experiment_by_name(EXPERIMENT).experiment_id
        before = len(admin.search_runs([experiment_id]))
        done = subprocess.run(
            [sys.executable, "-m", f"pipeline.{stage}", *STAGES[stage]], cwd=tmp_path,
            env=client_env(MLFLOW_TRACKING_URI=tracking_server.uri, **logins[login]),
            capture_output=True, text=True,
        )  # fmt: skip
        after = len(admin.search_runs([experiment_id]))
    assert (done.returncode, done.stderr.splitlines()) == (1, [expected])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]
    assert after == before


@pytest.fixture
def as_admin(tracking_server: Server, monkeypatch: pytest.MonkeyPatch):
    """MLflow's client for users and permissions, logged in as the admin."""
    from pipeline.tracking import access

    for name, value in tracking_server.login("admin", tracking_server.admin_password).items():
        monkeypatch.setenv(name, value)
    return access.auth_client(tracking_server.uri)


def experiment_id(uri: str) -> str:
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri).get_experiment_by_name(EXPERIMENT).experiment_id


def test_a_user_denied_the_experiment_is_told_which(
    trained: Path, tracking_server: Server, as_admin, tmp_path: Path
) -> None:
    password = secrets.token_urlsafe(16)
    as_admin.create_user("eve", password)
    as_admin.grant_user_permission("eve", "experiment", experiment_id(tracking_server.uri),
                                   "DENY")  # fmt: skip
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params(tmp_path)))
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.train", "--variant", "nobn"], cwd=tmp_path,
        env=client_env(MLFLOW_TRACKING_URI=tracking_server.uri, MLFLOW_TRACKING_USERNAME="eve",
                       MLFLOW_TRACKING_PASSWORD=password),
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"MLflow tracking server {tracking_server.uri} refused these credentials write access to "
        f"experiment '{EXPERIMENT}' (403): ask its admin for EDIT on it "
        "(python -m pipeline.team add <user>)"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def team_add(server: Server, work: Path, *args: str, password: str, admin: bool = True):
    (work / "params.yaml").write_text(yaml.safe_dump(tiny_params(work)))
    login = server.login("admin", server.admin_password) if admin else server.login("rob")
    return subprocess.run([sys.executable, "-m", "pipeline.team", "add", *args], cwd=work,
                          env=client_env(MLFLOW_TRACKING_URI=server.uri, **login),
                          input=password + "\n", capture_output=True, text=True)  # fmt: skip


def test_adding_an_existing_user_changes_only_their_permission(
    trained: Path, tracking_server: Server, as_admin, tmp_path: Path
) -> None:
    first, second = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    assert team_add(tracking_server, tmp_path, "cy", "--read-only", password=first).returncode == 0
    experiment = experiment_id(tracking_server.uri)
    assert as_admin.get_user_permission("cy", "experiment", experiment).permission == "READ"
    again = team_add(tracking_server, tmp_path, "cy", password=second)
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("user 'cy' exists (password unchanged); EDIT on experiment")
    assert as_admin.get_user_permission("cy", "experiment", experiment).permission == "EDIT"
    by_name = f"/api/2.0/mlflow/experiments/get-by-name?experiment_name={EXPERIMENT}"
    assert rest(tracking_server, by_name, ("cy", first))[0] == 200
    assert rest(tracking_server, by_name, ("cy", second))[0] == 401


def test_only_the_admin_adds_users(trained: Path, tracking_server: Server, tmp_path: Path) -> None:
    done = team_add(tracking_server, tmp_path, "dan", password=secrets.token_urlsafe(16),
                    admin=False)  # fmt: skip
    assert (done.returncode, done.stderr.splitlines()) == (1, [
        f"MLflow tracking server {tracking_server.uri} refused (403): only an admin adds users; "
        "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to the admin's"
    ])  # fmt: skip
