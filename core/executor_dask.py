"""The Executor interface on a Dask distributed cluster: `EXECUTOR=tcp://host:8786`.

The same module-level functions the process pool runs are submitted as tasks to a
`distributed.Client`; each reads its inputs from and writes its product to the workspace itself,
so the workspace (and the photos) must be on storage every worker sees AT THE SAME PATH (an NFS
or SMB share mounted alike everywhere). That is checked when the executor starts: a probe file
written into the workspace here must be read back, with the same content, by every worker.
Workers need AlignKit's `core/` package (importable as `alignkit.core`) and its Python
dependencies (numpy, OpenCV, SciPy), not QGIS. A worker that dies has its tasks rerun elsewhere by
the scheduler; a task's product is written atomically, so a half-done item is simply redone.

Dask is optional: nothing imports this module unless an address is given, and then a missing
`distributed` package is a clear error, not an ImportError.
"""

import os
import queue
import re
import uuid

from .cancel import check
from .executor import POLL_S, Executor, ExecutorError, report_progress

CONNECT_TIMEOUT_S = 5.0  # an unreachable scheduler is reported after this, before any work
WORKERS_TIMEOUT_S = 30.0  # a reachable scheduler with no worker at all
TASK_RETRIES = 2  # a task that raised is retried this often (a worker dying is the scheduler's retry)
_ADDRESS = re.compile(r"^(tcp|tls|ucx|inproc)://[^\s/]+$")
_PROBE_NAME = ".alignkit_executor_probe_"


def normalize_address(address):
    """`host:port` or `tcp://host:port` -> `tcp://host:port`; anything else is an ExecutorError."""
    text = str(address).strip()
    if "://" not in text:
        text = "tcp://" + text
    if not _ADDRESS.match(text):
        raise ExecutorError(
            f"EXECUTOR {address!r} is not a Dask scheduler address; expected tcp://host:port "
            "(empty for the local process pool)"
        )
    return text


def _import_distributed(address):
    try:
        import distributed
    except ImportError as exc:
        raise ExecutorError(
            f"EXECUTOR {address}: the Dask executor needs the 'distributed' package, which is not "
            f"installed in this Python ({exc}); install it with: python -m pip install \"dask[distributed]\" "
            "(or leave EXECUTOR empty for the local process pool)"
        ) from None
    return distributed


_worker_ready = False


def _call(fn, item):
    """Runs on a worker: one OpenCV thread per task (the cluster's slots keep the cores busy)."""
    global _worker_ready
    if not _worker_ready:
        import cv2

        cv2.setNumThreads(1)
        _worker_ready = True
    return fn(item)


def _probe(workspace, probe_path, token, folders):
    """Runs on each worker: what this worker sees of the shared paths (a dict, never raises)."""
    seen = {"cwd": os.getcwd(), "missing": [f for f in folders if not os.path.isdir(f)]}
    try:
        with open(probe_path, encoding="utf-8") as f:
            seen["token"] = f.read() == token
    except OSError as exc:
        seen["token"] = False
        seen["error"] = f"{exc.strerror or exc}"
    seen["workspace"] = os.path.isdir(workspace)
    return seen


class DaskExecutor(Executor):
    """Runs `map` items as tasks on the Dask scheduler at `address` (see the module's docstring)."""

    def __init__(self, address, shared=(), connect_timeout=CONNECT_TIMEOUT_S,
                 workers_timeout=WORKERS_TIMEOUT_S):
        self.address = normalize_address(address)
        self.connect_timeout = connect_timeout
        self.workers_timeout = workers_timeout
        self._distributed = _import_distributed(self.address)
        self._client = None
        self._connect()
        if shared:
            self.check_shared(*shared)

    @property
    def description(self):
        return f"dask {self.address}"

    def _connect(self):
        if self._client is not None:
            return self._client
        try:
            client = self._distributed.Client(
                self.address, timeout=self.connect_timeout, set_as_default=False
            )
        except (OSError, TimeoutError) as exc:
            raise ExecutorError(
                f"EXECUTOR {self.address}: cannot reach the Dask scheduler "
                f"(no answer within {self.connect_timeout:g} s: {exc}); start it with "
                "`dask scheduler` and workers with `dask worker <address>`, or leave EXECUTOR empty"
            ) from None
        try:
            client.wait_for_workers(1, timeout=self.workers_timeout)
        except (OSError, TimeoutError):
            client.close()
            raise ExecutorError(
                f"EXECUTOR {self.address}: the Dask scheduler answers but has no worker after "
                f"{self.workers_timeout:g} s; start workers with `dask worker {self.address}`"
            ) from None
        self._client = client
        return client

    def check_shared(self, workspace, *folders):
        """Every worker must see `workspace` (the same storage, not a namesake) and `folders`.

        A probe file with a random token is written into the workspace here and read on every
        worker; ExecutorError naming the worker and the path when one does not see it.
        """
        workspace = os.fspath(workspace)
        folders = [os.fspath(f) for f in folders if f]
        token = uuid.uuid4().hex
        probe_path = os.path.join(workspace, _PROBE_NAME + token)
        with open(probe_path, "w", encoding="utf-8") as f:
            f.write(token)
        try:
            seen = self._connect().run(_probe, workspace, probe_path, token, folders, on_error="return")
        finally:
            os.remove(probe_path)
        for worker, view in sorted(seen.items()):
            if isinstance(view, BaseException):
                raise ExecutorError(f"EXECUTOR {self.address}: worker {worker} failed the workspace probe: {view}")
            relative = "" if os.path.isabs(workspace) else (
                f" (a relative path: the worker resolves it in its own folder {view['cwd']})")
            if not view["workspace"] or not view["token"]:
                raise ExecutorError(
                    f"EXECUTOR {self.address}: worker {worker} does not see the workspace {workspace}"
                    f"{relative}; the workspace must be on storage every worker sees at the same path "
                    "(a shared filesystem)"
                )
            if view["missing"]:
                raise ExecutorError(
                    f"EXECUTOR {self.address}: worker {worker} does not see {', '.join(view['missing'])}; "
                    "the photos must be on storage every worker sees at the same path (a shared filesystem)"
                )
        return sorted(seen)

    def map(self, fn, items, progress=None, is_canceled=None, message="working"):
        items = list(items)
        if not items:
            return
        check(is_canceled)
        client = self._connect()
        done_queue = queue.Queue()
        run_id = uuid.uuid4().hex[:12]
        name = getattr(fn, "__name__", "task")
        futures = []
        finished = False
        try:
            for k, item in enumerate(items):
                future = client.submit(_call, fn, item, key=f"alignkit-{name}-{run_id}-{k}",
                                       pure=False, retries=TASK_RETRIES)
                future.add_done_callback(done_queue.put)
                futures.append(future)
            done_count = 0
            while done_count < len(items):
                try:
                    future = done_queue.get(timeout=POLL_S)
                except queue.Empty:
                    future = None
                if future is not None:
                    result = self._result(future)
                    future.release()
                    done_count += 1
                    report_progress(progress, done_count, len(items), message)
                    yield result
                check(is_canceled)
            finished = True
        finally:
            if not finished:  # cancel, a task's error, or the caller abandoned the generator
                pending = [f for f in futures if not f.done()]
                if pending:
                    try:
                        client.cancel(pending, force=True)
                    except Exception:  # noqa: BLE001 - the scheduler may be gone: nothing left to cancel
                        pass

    def _result(self, future):
        """The task's result; its own exception re-raised; a cluster failure as an ExecutorError."""
        try:
            return future.result()
        except self._distributed.client.FutureCancelledError as exc:  # the scheduler went away
            raise ExecutorError(
                f"EXECUTOR {self.address}: task {future.key} was lost ({exc}); is the Dask scheduler "
                "still running? Run again to resume from the workspace"
            ) from None
        except self._distributed.KilledWorker as exc:  # every worker that tried it died
            raise ExecutorError(
                f"EXECUTOR {self.address}: task {future.key} killed the workers that ran it ({exc}); "
                "out of memory? Give the workers more memory or use a smaller working image size"
            ) from None

    def close(self):
        if self._client is not None:
            client, self._client = self._client, None
            client.close()
