"""One small interface for per-image / per-pair work: `Executor.map(fn, items, progress, is_canceled)`.

`fn` is a module-level function taking one small item (paths, indices, the config as a dict); it
reads its inputs from and writes its product to the workspace itself, so no big arrays cross a
process boundary and a distributed engine could take the pool's place with the same workspace.
Results are yielded in completion order; put whatever identifies the item into the result.
make_executor picks the engine: one process, a local process pool, or (an address given) a Dask
distributed cluster (core/executor_dask.py, optional: only imported when an address is given).
"""

import concurrent.futures as cf
import ctypes
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time

from .cancel import check

POLL_S = 0.1  # how often a waiting map looks at is_canceled: cancel is honoured well within a second


class ExecutorError(OSError):
    """An executor that cannot run: no Dask installed, a scheduler out of reach, a workspace not shared,
    a cluster that lost its tasks. An environment problem like an OSError (pipeline.run reports both
    as an AlignmentError), not a bug in a task: a task's own exception is re-raised as it is."""


class Executor:
    description = "executor"  # recorded in the run's summary

    def map(self, fn, items, progress=None, is_canceled=None, message="working"):
        raise NotImplementedError

    def close(self):
        """Release workers; the executor may still be used afterwards (it starts new ones)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def report_progress(progress, done, total, message):
    if progress is not None:
        progress(done / total if total else 1.0, message)



class SerialExecutor(Executor):
    """Runs every item in this process, in order: for debugging, tests and tiny jobs."""

    description = "serial (this process)"

    def map(self, fn, items, progress=None, is_canceled=None, message="working"):
        items = list(items)
        for done, item in enumerate(items, 1):
            check(is_canceled)
            result = fn(item)
            report_progress(progress, done, len(items), message)
            yield result


def _python_executable():
    """The interpreter this process runs on, for spawned workers.

    In plain Python that is sys.executable. Inside QGIS, Python is embedded: sys.executable is the
    qgis binary or a guess from PATH (a pyenv or conda `python3` of another build, whose numpy ABI
    differs), so take the interpreter of the running installation: exec_prefix/bin/pythonX.Y.
    Workers get the parent's sys.path from multiprocessing, so they import the same packages.
    """
    exe = sys.executable or ""
    prefixes = {os.path.realpath(p) for p in (sys.exec_prefix, sys.base_exec_prefix)}
    if (
        os.path.basename(exe).lower().startswith("python")
        and os.path.realpath(os.path.dirname(os.path.dirname(exe))) in prefixes
    ):
        return exe
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    if os.name == "nt":
        candidates = [
            os.path.join(p, n)
            for p in (sys.exec_prefix, sys.base_exec_prefix)
            for n in ("python.exe", "pythonw.exe")
        ]
    else:
        candidates = [
            os.path.join(p, "bin", n)
            for p in (sys.exec_prefix, sys.base_exec_prefix)
            for n in (f"python{version}", "python3")
        ]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
    raise RuntimeError(f"no Python interpreter found for worker processes (sys.executable={exe!r})")


_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


class _SingleThreadedChildren:
    """Workers start with one BLAS/OpenMP thread each (set in the environment they inherit)."""

    def __enter__(self):
        self.saved = {name: os.environ.get(name) for name in _THREAD_VARIABLES}
        for name in _THREAD_VARIABLES:
            os.environ[name] = "1"

    def __exit__(self, *exc):
        for name, value in self.saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


PARENT_POLL_S = 0.5  # how often a worker's watchdog checks that the process that started it lives
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _init_worker(parent_pid=None, death_signal=True):
    # One OpenCV thread per worker: the pool already keeps every core busy.
    import cv2

    cv2.setNumThreads(1)
    if parent_pid is not None:
        exit_with_parent(parent_pid, death_signal)


def exit_with_parent(parent_pid, death_signal=True):
    """Make this worker end when the process that started it dies (kill -9 of QGIS or qgis_process).

    Orphaned workers would otherwise be re-parented to PID 1 and go on extracting and matching
    queued items for nobody. Linux: the kernel sends SIGTERM when the parent dies (prctl
    PR_SET_PDEATHSIG). Everywhere, and as a second line: a daemon thread that polls
    multiprocessing's parent sentinel and the parent PID and exits the process when either says
    the parent is gone.
    """
    if death_signal and sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the watchdog below still ends the worker
    if _parent_gone(parent_pid, multiprocessing.parent_process()):  # died before the signal was set
        os._exit(1)
    parent = multiprocessing.parent_process()
    threading.Thread(target=_watch_parent, args=(parent_pid, parent), name="alignkit-parent-watchdog",
                     daemon=True).start()


def _parent_gone(parent_pid, parent):
    if parent is not None and not parent.is_alive():
        return True
    return os.name == "posix" and os.getppid() != parent_pid  # re-parented: the parent died


def _watch_parent(parent_pid, parent):
    while not _parent_gone(parent_pid, parent):
        if parent is not None:
            parent.join(PARENT_POLL_S)  # returns at once when the parent's sentinel closes
        else:
            threading.Event().wait(PARENT_POLL_S)
    os._exit(1)  # no cleanup to do: every product is written atomically, a half-done item is redone


class ProcessExecutor(Executor):
    """A pool of worker processes started with "spawn".

    Spawn, not fork: the QGIS process is multi-threaded (Qt), and forking it can deadlock.
    """

    def __init__(self, workers=0, death_signal=True):
        self.workers = int(workers) if workers and workers > 0 else (os.cpu_count() or 1)
        self.death_signal = death_signal  # Linux's PR_SET_PDEATHSIG; False leaves the watchdog alone
        self._pool = None  # kept between map calls: starting a worker (imports) costs about a second

    @property
    def description(self):
        return f"process pool ({self.workers} workers)"

    def _get_pool(self):
        if self._pool is None:
            context = multiprocessing.get_context("spawn")
            context.set_executable(_python_executable())
            # PR_SET_PDEATHSIG fires when the *thread* that started a worker ends: the pool starts its
            # workers from the thread that first submits, which runs the whole map (a run's thread).
            self._pool = cf.ProcessPoolExecutor(
                max_workers=self.workers, mp_context=context, initializer=_init_worker,
                initargs=(os.getpid(), self.death_signal),
            )
        return self._pool

    def map(self, fn, items, progress=None, is_canceled=None, message="working"):
        items = list(items)
        if not items:
            return
        check(is_canceled)
        pool = self._get_pool()
        finished = False
        try:
            with _SingleThreadedChildren():  # the pool starts its processes on submit
                futures = [pool.submit(fn, item) for item in items]
            # Finished futures arrive on a queue: cf.wait over every pending future at each completion
            # costs time in the square of the items (7,500 pairs: about a minute of this process's CPU,
            # taken from the workers on a 2-core machine).
            finished_queue = queue.SimpleQueue()
            for future in futures:
                future.add_done_callback(finished_queue.put)
            for done_count in range(1, len(futures) + 1):
                while True:
                    check(is_canceled)
                    try:
                        future = finished_queue.get(timeout=POLL_S)
                        break
                    except queue.Empty:
                        pass
                result = future.result()  # re-raises a worker's exception here
                report_progress(progress, done_count, len(items), message)
                yield result
            finished = True
        finally:
            if not finished:  # cancel, a worker's error, or the caller abandoned the generator
                self._stop_now()

    def close(self):
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def _stop_now(self):
        if self._pool is not None:
            pool, self._pool = self._pool, None
            _terminate(pool)

    def __exit__(self, exc_type, *exc):
        if exc_type is not None:  # the caller failed while a map was running: do not wait for the queued tasks
            self._stop_now()
        self.close()


def _terminate(pool):
    """Stop a pool now (cancel, error, or the consumer abandoned the generator)."""
    # Python < 3.14 has no public way to kill busy workers; _processes is the pool's own table.
    processes = list((getattr(pool, "_processes", None) or {}).values())
    # A task bigger than the pipe's buffer (a submodel's tracks) may be half-written when its worker
    # dies; the queue's feeder thread then blocks for good, and joining it would hang the pool's
    # manager thread and so the interpreter's exit. The feeder is a daemon: leave it.
    call_queue = getattr(pool, "_call_queue", None)
    if call_queue is not None:
        call_queue.cancel_join_thread()
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        if not _reaped(process, 2.0):
            process.kill()  # SIGKILL cannot be ignored
            _reaped(process, 30.0)


def _reaped(process, seconds):
    """Wait until `process` has ended and its exit is recorded. The pool's manager thread joins the same
    Process objects: the waitpid that loses the race gets ECHILD, and is_alive() stays True until the
    winner has stored the exit code, so poll rather than trust one join."""
    deadline = time.monotonic() + seconds
    while process.is_alive() and time.monotonic() < deadline:
        process.join(timeout=0.05)
        time.sleep(0.005)
    return not process.is_alive()


def make_executor(workers=0, address="", shared=()):
    """The executor for a run.

    `address` (AlignConfig.executor) empty: a process pool of `workers` processes (0 = one per CPU
    core; 1 runs in this process). `tcp://host:port`: the Dask scheduler there (DaskExecutor),
    connected now, so an unreachable scheduler is an ExecutorError before any work; `shared`
    (workspace, photo folder) is then checked to be seen by every worker. `workers` may be an
    AlignConfig or its dict, which give both settings.
    """
    if not isinstance(workers, int):  # an AlignConfig or its dict
        get = workers.get if isinstance(workers, dict) else lambda key, default: getattr(workers, key, default)
        address = address or get("executor", "")
        workers = get("workers", 0)
    if address and str(address).strip():
        from .executor_dask import DaskExecutor

        return DaskExecutor(address, shared=shared)
    return SerialExecutor() if workers == 1 else ProcessExecutor(workers)
