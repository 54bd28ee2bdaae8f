"""The process pool's workers end when the process that started them is killed (issue 15.2)."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

SCRIPT = textwrap.dedent(
    """
    import sys, time
    from alignkit.core.executor import ProcessExecutor

    if __name__ == "__main__":
        executor = ProcessExecutor(2, death_signal=sys.argv[1] == "1")
        for _ in executor.map(time.sleep, [0.0] + [60.0] * 6):
            print("running", flush=True)  # the first item is done: the workers are up
    """
)


def descendants_when_running(proc, workers=2, timeout=120.0):
    """The process's children once its `workers` pool processes have started, the resource tracker too."""
    parent = psutil.Process(proc.pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = parent.children(recursive=True)
        spawned = [c for c in children if "spawn_main" in " ".join(c.cmdline())]
        if len(spawned) >= workers:
            return children
        time.sleep(0.05)
    raise AssertionError(f"the pool did not start {workers} workers: {parent.children(recursive=True)}")


def wait_gone(processes, timeout):
    """Processes still running (not exited, not zombies) after waiting up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        alive = []
        for p in processes:
            try:
                if p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


@pytest.mark.skipif(os.name != "posix", reason="kill -9 of a parent: POSIX semantics")
@pytest.mark.parametrize("death_signal", [True, False], ids=["pdeathsig", "watchdog-only"])
def test_workers_exit_when_their_parent_is_killed(tmp_path, death_signal):
    script = tmp_path / "pool.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.Popen([sys.executable, str(script), "1" if death_signal else "0"], stdout=subprocess.PIPE,
                            text=True, env=env)
    children = []
    try:
        assert proc.stdout.readline().strip() == "running"
        children = descendants_when_running(proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        alive = wait_gone(children, timeout=30.0)  # generous: a loaded machine; it takes well under a second
        assert alive == [], f"orphaned: {[(p.pid, p.cmdline()) for p in alive]}"
    finally:  # whatever happened, leave no process of this test behind
        for p in [proc] + children:
            try:
                p.kill()
            except (ProcessLookupError, psutil.NoSuchProcess):
                pass
        proc.wait(timeout=30)
