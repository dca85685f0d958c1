"""The stage's side of tracking: a Tracker, whose helper process makes the
stage's MLflow calls (helper.py) while the stage computes."""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import pickle
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from multiprocessing.connection import Pipe
from typing import Any, NoReturn

from pipeline.errors import PipelineError
from pipeline.tracking.helper import Helper
from pipeline.tracking.store import check_reachable, is_server

log = logging.getLogger("tracking")

STOP_SECONDS = 30  # for the helper to end the open runs and exit, after an error


class Reply:
    """The helper's answer to one request, read when first needed."""

    def __init__(self, tracker: Tracker) -> None:
        self.tracker, self.done, self.value, self.failure = tracker, False, None, None

    def result(self) -> Any:
        """The answer, once it came; PipelineError if this request or one before failed."""
        while not self.done:
            self.tracker._receive(wait=True)
        if self.failure is not None:
            raise PipelineError(self.failure)
        return self.value

    def arrived(self) -> bool:
        """Whether the answer is in, without waiting for it."""
        while not self.done and self.tracker._receive(wait=False):
            pass
        return self.done


class Tracker:
    """The stage's MLflow calls, made in order by a helper process
    (`python -m pipeline.tracking`).

    Importing MLflow and opening its SQL store cost about 2 s of CPU, and
    logging a model in the pt2 format another second for torch.export. On
    two cores that need not delay the stage: the helper does it on the
    second core while the stage loads data and trains on the first.

    `tracker.name(...)` sends a call of Helper.name to the helper (as
    `run.name(...)` does for a RemoteRun, with the run's handle first) and
    gives its Reply. If a request fails, the helper skips the rest, and the
    next call, Reply read or `close` raises its line as a PipelineError.
    Leaving the `with` block on an error stops the helper after it ended any
    open run; so does the stage's death, which closes the helper's input.

    On a tracking server, the constructor waits until the helper has checked
    that the server lets these credentials write to `experiment`
    (access.py): a refused login fails the stage before it reads any data,
    and leaves no run. That wait (MLflow's import, ~2 s) is only paid with a
    server; a local store has no logins.
    """

    def __init__(self, uri: str, experiment: str) -> None:
        check_reachable(uri)  # a dead server fails the stage now, not the helper later
        self.uri = uri
        # Popen, not multiprocessing: a spawned child would import the stage's
        # main module (torch) again; multiprocessing frames the messages.
        stdin, self.requests = Pipe(duplex=False)
        self.replies, stdout = Pipe(duplex=False)
        command = [sys.executable, "-m", "pipeline.tracking"]
        # A process group of its own: Ctrl-C in a terminal, or a signal to the
        # stage's group, reaches only the stage, which ends the runs; the
        # helper stops when its input closes (the stage's death included).
        self.process = subprocess.Popen(
            command, stdin=stdin.fileno(), stdout=stdout.fileno(), process_group=0
        )
        stdin.close()
        stdout.close()
        self.pending: deque[Reply] = deque()  # sent, not yet answered
        self.failure: str | None = None  # the helper's, once it answered with one
        self.opened_run = False  # whether the helper may have a run to end
        self.handles = itertools.count()
        self._send((uri, experiment))
        if is_server(uri):
            try:
                self.check_access().result()
            except BaseException:
                self._stop()
                raise

    def __getattr__(self, name: str) -> Callable[..., Reply]:
        return functools.partial(self.call, helper_method(name))

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, *rest: object) -> None:
        if kind is None:
            self.close()
            return
        self._stop()
        if self.failure is not None and str(error) != self.failure:
            log.warning("%s", self.failure)  # the helper's failure, not yet told

    @contextlib.contextmanager
    def run(
        self,
        experiment: str,
        name: str,
        tags: dict[str, str],
        params: dict[str, Any],
        parent: RemoteRun | None = None,
    ) -> Iterator[RemoteRun]:
        """A run (Helper.start_run), nested under `parent` if given. It ends
        FINISHED; KILLED when interrupted (Ctrl-C, SIGTERM); FAILED otherwise,
        with the reason in the tag `failure_reason`."""
        self.opened_run = True
        handle = next(self.handles)  # how requests name the run before its id is known
        parent_handle = parent.handle if parent else None
        started = self.start_run(handle, experiment, name, tags, params, parent_handle)
        try:
            yield RemoteRun(self, handle, started)
        except BaseException as err:
            killed = isinstance(err, KeyboardInterrupt)
            reason = "interrupted" if killed else str(err) or type(err).__name__
            # Waits, as FINISHED does, until every request before it was made:
            # the files they log may be deleted next. Never raises over `err`:
            # the helper's failure is `err`, or is told on leaving the Tracker.
            with contextlib.suppress(Exception):
                self.end_run(handle, "KILLED" if killed else "FAILED", reason).result()
            raise
        self.end_run(handle, "FINISHED").result()

    def close(self) -> None:
        """Wait until every request was made; PipelineError if one failed."""
        if self.requests.closed:
            return
        self.requests.close()  # the end of the helper's input: it answers the rest, exits
        while self._receive(wait=True, at_end=True):
            pass
        self.replies.close()
        if self.failure is not None or self._reap() != 0:
            self._failed()

    def call(self, method: str, *args: Any, **kwargs: Any) -> Reply:
        """Send a call of Helper.method; its Reply. Raises the helper's failure
        if one came."""
        while self._receive(wait=False):  # so that the helper never waits on a full pipe
            pass
        if self.failure is not None:
            raise PipelineError(self.failure)
        self._send((method, args, kwargs))
        self.pending.append(Reply(self))
        return self.pending[-1]

    def _send(self, message: tuple) -> None:
        # Plain pickle, not Connection.send's ForkingPickler: torch registers
        # reducers there that share tensors through file descriptors.
        data = pickle.dumps(message)
        try:
            with whole_messages():
                self.requests.send_bytes(data)
        except OSError:  # the helper is gone
            self._failed()

    def _receive(self, wait: bool, at_end: bool = False) -> bool:
        """Read the helper's next answer into the oldest pending Reply (or,
        none pending, its last word); without `wait`, only if it is there.
        Whether one was read; at the end of its output, False if `at_end`."""
        if not self.replies.poll(None if wait else 0):  # a signal may end the wait
            return False
        try:
            with whole_messages():
                value, failure = pickle.loads(self.replies.recv_bytes())
        except EOFError:
            if at_end:
                return False
            self._failed()
        self.failure = self.failure or failure
        if self.pending:
            reply = self.pending.popleft()
            reply.value, reply.failure, reply.done = value, failure, True
        return True

    def _failed(self) -> NoReturn:
        status = self._reap()
        stopped = f"the MLflow helper for {self.uri} stopped (exit status {status}); see above"
        raise PipelineError(self.failure or stopped)

    def _stop(self) -> None:
        """Stop the helper after an error, once it ended any open run."""
        if not self.opened_run:  # nothing to end: do not wait for its imports
            self.process.kill()
        self.requests.close()  # the helper ends the open runs, then exits
        # Read its answers meanwhile (a full pipe would stall it), for 30 s at most.
        deadline = time.monotonic() + STOP_SECONDS
        with contextlib.suppress(Exception):  # its failure; unreadable after a cut read
            while self.replies.poll(max(0.0, deadline - time.monotonic())):
                if not self._receive(wait=False, at_end=True):
                    break
        self.replies.close()
        self._reap(timeout=max(0.0, deadline - time.monotonic()))

    def _reap(self, timeout: float = STOP_SECONDS) -> int:
        """The helper's exit status, once it exited; killed if it takes longer."""
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def helper_method(name: str) -> str:
    """`name`, if it is a request the stage may send: a public method of Helper."""
    if name.startswith("_") or not callable(getattr(Helper, name, None)):
        raise AttributeError(f"Helper has no method {name!r}")
    return name


@contextlib.contextmanager
def whole_messages() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait until a message is sent or read whole: one cut
    in the middle would leave the pipe out of step. (Waiting for an answer
    stays interruptible: that is `poll`, outside.)"""
    signals = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class RemoteRun:
    """A run the helper holds open: `run.name(...)` sends Helper.name(handle, ...)."""

    def __init__(self, tracker: Tracker, handle: int, started: Reply) -> None:
        self.tracker, self.handle, self.started = tracker, handle, started

    @property
    def run_id(self) -> str:
        return self.started.result()[0]

    @property
    def experiment_id(self) -> str:
        return self.started.result()[1]

    def __getattr__(self, name: str) -> Callable[..., Reply]:
        return functools.partial(self.tracker.call, helper_method(name), self.handle)
