"""The Dask executor (EXECUTOR=tcp://host:port) against a distributed.LocalCluster of worker processes.

The same photos aligned through the cluster and through the local process pool give the same
features (byte-identical), the same verified matches and the same registered photos; a scheduler
out of reach or a photo folder the workers do not see is refused before any work; cancel stops.
"""
import math
import os
import signal
import socket
import sys
import time

import numpy as np
import pytest

from alignkit.core import pipeline
from alignkit.core.cancel import Canceled
from alignkit.core.config import AlignConfig
from alignkit.core.executor import ExecutorError, ProcessExecutor, SerialExecutor, make_executor
from alignkit.core.workspace import read_npz

SMALL = dict(rows=3, cols=4, width=960, height=720)  # the 12-photo survey of test_pipeline
FAST = dict(max_features=4000, workers=2)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    distributed = pytest.importorskip("distributed", reason="dask[distributed] is not installed (optional)")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=":0") as local:
        yield local.scheduler_address


def test_missing_dask_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    with pytest.raises(ExecutorError, match=r"tcp://10\.0\.0\.1:8786.*pip install \"dask\[distributed\]\""):
        make_executor(0, "10.0.0.1:8786")


def test_empty_address_is_the_local_pool():
    assert isinstance(make_executor(2, ""), ProcessExecutor)
    assert isinstance(make_executor(1, "  "), SerialExecutor)
    assert isinstance(make_executor(AlignConfig(workers=1)), SerialExecutor)


def test_bad_address_is_refused():
    pytest.importorskip("distributed")
    with pytest.raises(ExecutorError, match="not a Dask scheduler address"):
        make_executor(0, "http://host:8786/path")


def test_unreachable_scheduler_fails_fast_before_any_work(tmp_path):
    pytest.importorskip("distributed")
    from alignkit.core.synthetic import SurveySpec, generate_survey

    survey = generate_survey(tmp_path / "survey", SurveySpec(rows=1, cols=3, width=320, height=240))
    address = f"tcp://127.0.0.1:{_free_port()}"  # nothing listens there
    out = tmp_path / "out" / "result.gpkg"
    out.parent.mkdir()
    started = time.monotonic()
    with pytest.raises(pipeline.AlignmentError, match=f"{address}.*cannot reach the Dask scheduler"):
        pipeline.run(AlignConfig(images=str(survey / "images"), output=str(out), executor=address))
    assert time.monotonic() - started < 60  # a generous deadline: the connect timeout is 5 s
    workspace = tmp_path / "out" / "result_workspace"
    assert not (workspace / "features").exists()  # refused before any work
    assert not out.exists()


def test_results_progress_and_errors_on_the_cluster(cluster, tmp_path):
    with make_executor(0, cluster, shared=(tmp_path,)) as executor:
        assert executor.description == f"dask {cluster}"
        seen = []
        out = sorted(executor.map(abs, [-3, -1, -2], progress=lambda f, m: seen.append((f, m)), message="m"))
        assert out == [1, 2, 3]
        assert [f for f, _ in seen] == pytest.approx([1 / 3, 2 / 3, 1.0]) and seen[0][1] == "m"

        with pytest.raises(ValueError, match="math domain error"):  # a task's error reaches the caller
            list(executor.map(math.sqrt, [-1.0]))


def test_cancel_stops_the_map_without_waiting_for_running_tasks(tmp_path):
    """Running tasks cannot be interrupted on a worker (they finish, their products are atomic); the
    map returns at once and queued tasks are dropped. Its own cluster: its workers stay busy a while."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=":0") as local:
        with make_executor(0, local.scheduler_address) as executor:
            deadline = time.monotonic() + 2.0
            with pytest.raises(Canceled):
                for _ in executor.map(time.sleep, [0.0] + [60.0] * 4,
                                      is_canceled=lambda: time.monotonic() > deadline):
                    pass
            assert time.monotonic() - deadline < 40  # generous: it did not wait for the 60 s tasks
            client = executor._connect()
            until = time.monotonic() + 30.0
            while any(client.processing().values()) and time.monotonic() < until:
                time.sleep(0.1)
            assert not any(client.processing().values())  # the scheduler forgot the tasks, queued or not


def test_workers_must_see_the_photos(cluster, tmp_path):
    with pytest.raises(ExecutorError, match=r"does not see .*nowhere.*shared filesystem"):
        make_executor(0, cluster, shared=(tmp_path, tmp_path / "nowhere"))


def test_probe_reports_a_workspace_it_cannot_read(tmp_path):
    from alignkit.core.executor_dask import _probe

    seen = _probe(str(tmp_path / "elsewhere"), str(tmp_path / "elsewhere" / "probe"), "token", [str(tmp_path)])
    assert seen["token"] is False and seen["workspace"] is False and seen["missing"] == []


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    from alignkit.core.synthetic import SurveySpec, generate_survey

    out = tmp_path_factory.mktemp("survey")
    generate_survey(out, SurveySpec(**SMALL, gps_noise_h_m=1.0, gps_noise_v_m=2.0, seed=11))
    return out


@pytest.mark.slow
def test_cluster_alignment_equals_the_process_pool(cluster, survey, tmp_path):
    images = str(survey / "images")
    runs = {}
    for name, address in (("pool", ""), ("dask", cluster)):
        out = tmp_path / name / "result.gpkg"
        out.parent.mkdir()
        runs[name] = (out, pipeline.run(AlignConfig(images=images, output=str(out), executor=address, **FAST)))
    pool, dask = runs["pool"][1], runs["dask"][1]
    assert pool["executor"] == "process pool (2 workers)" and dask["executor"] == f"dask {cluster}"
    assert dask["registered"] == pool["registered"] == pool["images"] == len(os.listdir(images))

    features = {name: out.parent / "result_workspace" / "features" for name, (out, _) in runs.items()}
    kp_files = sorted(p.name for p in features["pool"].iterdir() if p.name.endswith((".kp.npy", ".desc.npy")))
    assert len(kp_files) == 2 * pool["images"]
    for name in kp_files:
        assert (features["dask"] / name).read_bytes() == (features["pool"] / name).read_bytes(), name

    matches = {name: out.parent / "result_workspace" / "matches" for name, (out, _) in runs.items()}
    pair_files = sorted(os.listdir(matches["pool"]))
    assert pair_files == sorted(os.listdir(matches["dask"])) and len(pair_files) == pool["pairs_candidate"]
    for name in pair_files:
        a, b = read_npz(matches["pool"] / name), read_npz(matches["dask"] / name)
        for key in ("matches", "n_inliers", "model"):
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{name}: {key}")


@pytest.mark.qgis
def test_processing_executor_parameter_reaches_the_run(alignkit_provider, tmp_path):
    """EXECUTOR through Processing: an address nobody answers is a Processing error naming it."""
    pytest.importorskip("distributed")
    from qgis.core import QgsProcessingException

    import processing
    from alignkit.core.synthetic import SurveySpec, generate_survey

    survey = generate_survey(tmp_path / "survey", SurveySpec(rows=1, cols=3, width=320, height=240))
    address = f"tcp://127.0.0.1:{_free_port()}"
    with pytest.raises(QgsProcessingException, match=f"{address}.*cannot reach"):
        processing.run("alignkit:alignphotos", {"IMAGES": str(survey / "images"),
                                                "OUTPUT": str(tmp_path / "r.gpkg"), "EXECUTOR": f" {address} "})
    assert not (tmp_path / "r.gpkg").exists()


def test_a_killed_worker_loses_no_work(tmp_path):
    """A worker killed mid-extraction: the scheduler reruns its tasks elsewhere, the store is complete
    and byte-identical to one process's."""
    distributed = pytest.importorskip("distributed")
    from alignkit.core.features import extract_features
    from alignkit.core.synthetic import SurveySpec, generate_survey

    survey = generate_survey(tmp_path / "survey", SurveySpec(rows=2, cols=4, width=960, height=720))
    paths = sorted((survey / "images").iterdir())
    config = AlignConfig(max_image_size=960, max_features=2000)
    serial = extract_features(paths, tmp_path / "serial", config, SerialExecutor())
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=":0") as local:
        with make_executor(0, local.scheduler_address) as executor:
            pids = executor._connect().run(os.getpid)
            killed = []

            def kill_one_worker(fraction, message):
                if not killed:  # after the first image: the others are running or queued
                    victim = pids[sorted(pids)[0]]
                    os.kill(victim, signal.SIGKILL)  # kill -9: the nanny starts a new worker
                    killed.append(victim)

            store = extract_features(paths, tmp_path / "dask", config, executor, progress=kill_one_worker)
    assert killed and not store.errors
    for i in range(len(paths)):
        assert store.images[i]["count"] == serial.images[i]["count"] > 0
        np.testing.assert_array_equal(store.keypoints(i), serial.keypoints(i))


def test_a_scheduler_that_goes_away_is_a_clear_error():
    """The scheduler stops mid-map: an ExecutorError naming it (pipeline.run: an AlignmentError), no hang."""
    distributed = pytest.importorskip("distributed")
    local = distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                                     dashboard_address=":0")
    address = local.scheduler_address
    with make_executor(0, address) as executor:
        with pytest.raises(ExecutorError, match=f"{address}: task .* was lost"):
            for _ in executor.map(time.sleep, [0.0, 60.0, 60.0], progress=lambda f, m: local.close()):
                pass
    local.close()


def test_submodels_run_on_the_cluster(cluster, tmp_path):
    """Split and merge with its submodels as Dask tasks: the model the process of this test makes."""
    from alignkit.core import submodels
    from alignkit.tests.test_reconstruction import cameras_for, survey

    truth = survey(rows=3, cols=8, gps_noise_h=1.0, gps_noise_v=2.0, seed=7)
    cams, config = cameras_for(24), AlignConfig(submodel_photos=12)
    here = submodels.reconstruct_split(truth.tracks, cams, truth.gps, [], config, SerialExecutor, 25.0)
    there = submodels.reconstruct_split(truth.tracks, cams, truth.gps, [], config,
                                        lambda: make_executor(0, cluster, shared=(tmp_path,)), 25.0)
    assert any("split into 2 submodels" in line for line in there.log) and there.registered.all()
    np.testing.assert_allclose(there.C, here.C, atol=1e-9)
