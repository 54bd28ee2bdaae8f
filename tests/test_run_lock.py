"""Run locks and preflight checks: a second run on the same output or workspace is refused at once
(naming the path and the other run's PID), a killed holder leaves no stale lock, and output
locations that cannot be written are refused before any work, with the path."""
import os
import subprocess
import sys
import textwrap
import time

import pytest

from alignkit.core import pipeline, workspace
from alignkit.core.config import AlignConfig

HOLDER = textwrap.dedent(
    """
    import sys, time
    from alignkit.core import workspace
    with workspace.exclusive_lock(sys.argv[1], "the test output"):
        print("locked", flush=True)
        time.sleep(120)
    """
)


def start_holder(lock_path):
    """A separate process that takes the lock and keeps it; returns once it holds it."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock_path)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def stop(proc):
    proc.kill()
    proc.wait(timeout=30)


def test_a_held_lock_refuses_at_once_with_the_pid_and_dies_with_its_holder(tmp_path):
    lock = tmp_path / "out.gpkg.lock"
    holder = start_holder(lock)
    try:
        with pytest.raises(workspace.LockedError) as caught:
            with workspace.exclusive_lock(lock, "the output out.gpkg"):
                pass
        assert caught.value.pid == holder.pid
        assert f"PID {holder.pid}" in str(caught.value) and str(lock) in str(caught.value)
    finally:
        stop(holder)  # kill -9: the operating system releases the lock with the process
    with workspace.exclusive_lock(lock, "the output out.gpkg"):
        assert lock.read_text().strip() == str(os.getpid())
    assert not lock.exists()  # released and removed


def test_a_second_run_on_the_same_output_or_workspace_is_refused_before_any_work(tmp_path):
    images = tmp_path / "photos"
    images.mkdir()
    out = tmp_path / "result" / "r.gpkg"
    for lock, what in ((tmp_path / "result" / "r.gpkg.lock", "output"), (tmp_path / "ws" / ".lock", "workspace")):
        lock.parent.mkdir(exist_ok=True)
        holder = start_holder(lock)
        try:
            config = AlignConfig(images=str(images), output=str(out), workspace=str(tmp_path / "ws"))
            with pytest.raises(pipeline.AlignmentError, match=f"the {what} .* in use by another AlignKit run "
                                                              f"\\(PID {holder.pid};"):
                pipeline.run(config)  # refused at once: the holder keeps its lock for two minutes
        finally:
            stop(holder)
    # The killed holders left their lock files, not their locks: the next run goes on to the photos.
    with pytest.raises(ValueError, match="no images"):
        pipeline.run(config)
    assert not (tmp_path / "result" / "r.gpkg.lock").exists() and not (tmp_path / "ws" / ".lock").exists()


def test_output_that_is_a_folder_or_cannot_be_written_is_refused_before_any_work(tmp_path):
    images = tmp_path / "photos"
    images.mkdir()
    (tmp_path / "folder.gpkg").mkdir()
    with pytest.raises(pipeline.AlignmentError, match="folder.gpkg is a folder"):
        pipeline.run(AlignConfig(images=str(images), output=str(tmp_path / "folder.gpkg")))
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(pipeline.AlignmentError, match="workspace .*a_file is a file"):
        pipeline.run(AlignConfig(images=str(images), output=str(tmp_path / "r.gpkg"), workspace=str(tmp_path / "a_file")))


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="mode bits do not stop root")
def test_unwritable_output_folder_or_workspace_is_refused_before_any_work(tmp_path):
    images = tmp_path / "photos"
    images.mkdir()
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(pipeline.AlignmentError, match=f"cannot write in the output folder {locked}"):
            pipeline.run(AlignConfig(images=str(images), output=str(locked / "r.gpkg"), workspace=str(tmp_path / "ws")))
        with pytest.raises(pipeline.AlignmentError, match=f"cannot write in the workspace {locked / 'ws'}"):
            pipeline.run(AlignConfig(images=str(images), output=str(tmp_path / "r.gpkg"), workspace=str(locked / "ws")))
    finally:
        locked.chmod(0o755)


def test_a_folder_that_refuses_writes_is_named_before_any_work(tmp_path, monkeypatch):
    """As `chattr +i` does even for root: creating a file in the folder fails with EPERM."""
    images = tmp_path / "photos"
    images.mkdir()
    immutable = tmp_path / "immutable"
    immutable.mkdir()
    real_open = os.open

    def refusing_open(path, flags, *args, **kwargs):
        if os.path.dirname(os.fspath(path)) == str(immutable) and flags & os.O_CREAT:
            raise PermissionError(1, "Operation not permitted", os.fspath(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(workspace.os, "open", refusing_open)
    with pytest.raises(pipeline.AlignmentError, match=f"cannot write in the output folder {immutable}: "
                                                      "Operation not permitted"):
        pipeline.run(AlignConfig(images=str(images), output=str(immutable / "r.gpkg"), workspace=str(tmp_path / "w")))
    with pytest.raises(pipeline.AlignmentError, match=f"cannot write in the workspace {immutable}: "
                                                      "Operation not permitted"):
        pipeline.run(AlignConfig(images=str(images), output=str(tmp_path / "r.gpkg"), workspace=str(immutable)))


RUNNER = textwrap.dedent(
    """
    import os, sys, time
    from alignkit.core import pipeline
    from alignkit.core.config import AlignConfig
    images, out, started, go = sys.argv[1:5]

    def progress(fraction, message):
        if not os.path.exists(started):
            open(started, "w").close()
            deadline = time.monotonic() + 120
            while not os.path.exists(go) and time.monotonic() < deadline:
                time.sleep(0.05)

    if __name__ == "__main__":
        summary = pipeline.run(AlignConfig(images=images, output=out, max_features=2000, workers=1), progress)
        print("registered", summary["registered"], flush=True)
    """
)


@pytest.mark.slow
def test_two_concurrent_runs_on_one_output_the_second_refuses_and_the_first_completes(tmp_path):
    from alignkit.core.synthetic import SurveySpec, generate_survey

    generate_survey(tmp_path / "survey", SurveySpec(rows=2, cols=3, width=640, height=480, seed=5))
    images, out = tmp_path / "survey" / "images", tmp_path / "out" / "r.gpkg"
    started, go = tmp_path / "started", tmp_path / "go"
    script = tmp_path / "runner.py"
    script.write_text(RUNNER)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    first = subprocess.Popen([sys.executable, str(script), str(images), str(out), str(started), str(go)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while not started.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert started.exists(), first.stdout.read() if first.poll() is not None else "the first run never started"
        with pytest.raises(pipeline.AlignmentError, match=f"the output {out} is in use by another AlignKit run "
                                                          f"\\(PID {first.pid};"):
            pipeline.run(AlignConfig(images=str(images), output=str(out), workers=1))
        go.touch()
        output, _ = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0, output
    assert "registered 6" in output
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(".") or p.suffix in (".lock", ".gpkg-wal",
                                                                                                ".gpkg-shm")]
    assert leftovers == []
    assert {p.name for p in out.parent.iterdir()} >= {"r.gpkg", "r_summary.json", "r_workspace"}
