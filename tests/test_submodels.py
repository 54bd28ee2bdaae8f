"""Split and merge (core/submodels.py): the cut, the merge, and a split block against its truth."""
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from alignkit.core import submodels
from alignkit.core.config import AlignConfig
from alignkit.core.executor import SerialExecutor
from alignkit.core.reconstruction import reconstruct
from alignkit.tests.test_reconstruction import cameras_for, survey, umeyama


def grid(rows, cols, step=10.0):
    return np.array([[c * step, r * step, 50.0] for r in range(rows) for c in range(cols)])


def test_parts_cover_the_block_within_the_limit_and_overlap_by_the_margin():
    xy = grid(10, 30)
    parts = submodels.plan_parts(xy, 80, overlap_m=0.0)
    assert len(parts) == 4 and all(len(p) <= 80 for p in parts)
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(300))  # disjoint cores, all photos
    assert all(np.ptp(xy[p, 0]) < 80 for p in parts)  # cut across the long (x) side
    wide = submodels.plan_parts(xy, 80, overlap_m=15.0)
    assert all(np.isin(core, part).all() for core, part in zip(parts, wide))
    for k in range(3):  # neighbours along x share the photos within 15 m of their cut: a column or two
        assert len(np.intersect1d(wide[k], wide[k + 1])) >= 10
    assert len(np.intersect1d(wide[0], wide[3])) == 0
    assert submodels.plan_parts(xy, 300, overlap_m=15.0)[0].tolist() == list(range(300))


def test_subset_keeps_tracks_seen_twice_in_local_indices():
    truth = survey(rows=2, cols=4, seed=4)
    images = np.array([1, 2, 5])
    sub = submodels.subset_tracks(truth.tracks, images)
    assert set(np.unique(sub.obs_image)) <= {0, 1, 2}
    _, count = np.unique(sub.obs_track, return_counts=True)
    assert count.min() >= 2 and sub.obs_track.max() + 1 == len(sub.track_rgb)
    # Each kept observation is one of the block's, in the right photo.
    obs = truth.tracks
    k = np.flatnonzero(np.isin(obs.obs_image, images))[0]
    row = np.flatnonzero((sub.obs_xy == obs.obs_xy[k]).all(axis=1))
    assert len(row) <= 1 and (len(row) == 0 or images[sub.obs_image[row[0]]] == obs.obs_image[k])


def test_merge_moves_a_part_onto_the_photos_it_shares():
    rng = np.random.default_rng(0)
    C = rng.uniform(0, 100, (12, 3))
    R = np.repeat(np.eye(3)[None], 12, axis=0)
    lens = dict(focal=np.full(8, 1000.0), k1=np.zeros(8), k2=np.zeros(8))
    a = dict(images=np.arange(8), registered=np.ones(8, bool), R=R[:8], C=C[:8], **lens)
    # The second part sees photos 4..11 in a frame shifted, turned and scaled.
    rot = np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])
    b = dict(images=np.arange(4, 12), registered=np.ones(8, bool), R=R[4:] @ rot.T,
             C=2.0 * C[4:] @ rot.T + 5.0, **lens)
    a["georeferenced"] = b["georeferenced"] = True
    merged, log = submodels.merge_parts([a, b], 12)
    assert merged["registered"].all() and "4 shared photos" in log[1]
    assert np.allclose(merged["C"], C, atol=1e-9) and np.allclose(merged["R"], R, atol=1e-9)
    # A part that shares too few photos stays where its GPS put it, unless it has no GPS placement:
    # then its photos are left for the merged block to register.
    c = dict(b, images=np.arange(8, 16), C=C[4:] + 100.0)
    merged, _ = submodels.merge_parts([a, dict(c, georeferenced=True)], 16)
    assert merged["registered"][8:].all() and np.allclose(merged["C"][8:], C[4:] + 100.0)
    merged, log = submodels.merge_parts([a, dict(c, georeferenced=False)], 16)
    assert not merged["registered"][8:].any() and "left to register" in log[1]


def shape_error(rec, truth):
    """Camera centres after a similarity onto the truth (RMS, share of the flying height) and the
    largest rotation error (degrees)."""
    s, rot, t = umeyama(rec.C, truth.C)
    centre = np.sqrt(np.mean(np.sum((s * rec.C @ rot.T + t - truth.C) ** 2, axis=1))) / truth.height
    rel = Rotation.from_matrix(rec.R @ rot.T @ np.transpose(truth.R, (0, 2, 1))).magnitude()
    return centre, np.degrees(rel).max()


@pytest.mark.slow
def test_split_block_is_as_good_as_one_model():
    """60 photos (6 x 10) as four submodels of at most 20 (and their overlap): every photo in one
    georeferenced component, and the truth's shape as closely as one model of the block."""
    truth = survey(rows=6, cols=10, gps_noise_h=1.0, gps_noise_v=2.0, seed=5)
    cams = cameras_for(60)
    rec = submodels.reconstruct_split(truth.tracks, cams, truth.gps, [], AlignConfig(submodel_photos=20),
                                      SerialExecutor, overlap_m=30.0)
    assert any("split into 4 submodels" in line for line in rec.log), rec.log[:3]
    assert sum("merged through" in line for line in rec.log) == 3, rec.log[:6]
    assert rec.registered.all() and (rec.component == 0).all() and rec.georeferenced
    # A real lens (the survey's k1, k2): the parts show it, and the merged block tests it and keeps it free.
    assert not rec.distortion_held.any() and rec.distortion_wald[0] > 10 * rec.distortion_threshold
    single = reconstruct(truth.tracks, cams, truth.gps, [], AlignConfig())
    (split_centre, split_rot), (one_centre, one_rot) = shape_error(rec, truth), shape_error(single, truth)
    print(f"split {100 * split_centre:.4f} % {split_rot:.3f} deg, one model {100 * one_centre:.4f} % {one_rot:.3f} deg")
    assert split_centre < 1.2 * one_centre and split_rot < 1.2 * one_rot


@pytest.mark.slow
def test_a_lens_no_submodel_shows_is_held_without_testing_the_merged_block():
    """A lens without distortion: each part's gate holds it, so the merged block skips the test (an
    adjustment of the whole block) and its shape is as good as one model's, which tests it."""
    truth = survey(rows=6, cols=10, gps_noise_h=1.0, gps_noise_v=2.0, seed=5, lens=(0.0, 0.0))
    cams = cameras_for(60)
    rec = submodels.reconstruct_split(truth.tracks, cams, truth.gps, [], AlignConfig(submodel_photos=20),
                                      SerialExecutor, overlap_m=30.0)
    assert any("lens distortion not shown by any submodel" in line for line in rec.log), rec.log
    assert rec.distortion_held.all() and (rec.k1 == 0).all() and (rec.k2 == 0).all()
    assert rec.distortion_wald[0] < rec.distortion_threshold
    single = reconstruct(truth.tracks, cams, truth.gps, [], AlignConfig())
    assert single.distortion_held.all()
    (split_centre, _), (one_centre, _) = shape_error(rec, truth), shape_error(single, truth)
    print(f"split {100 * split_centre:.4f} %, one model {100 * one_centre:.4f} %")
    assert split_centre < 1.2 * one_centre


def test_small_block_or_missing_gps_is_one_model():
    truth = survey(rows=2, cols=4, seed=6)
    config = AlignConfig(submodel_photos=5)

    def refuse():
        raise AssertionError("no executor for a block that is not split")

    gps = truth.gps.copy()
    gps[3] = np.nan
    rec = submodels.reconstruct_split(truth.tracks, cameras_for(8), gps, [], config, refuse, overlap_m=20.0)
    assert rec.registered.all() and not any("submodels" in line for line in rec.log)


def test_finished_submodels_are_kept_for_a_rerun(tmp_path):
    """A killed or cancelled run resumes with the submodels it finished: the rerun needs no executor
    and gives the same model; other inputs (another stamp) reconstruct them again."""
    truth = survey(rows=3, cols=8, gps_noise_h=1.0, gps_noise_v=2.0, seed=7)
    cams, config = cameras_for(24), AlignConfig(submodel_photos=12)
    cache = (tmp_path / "submodels", "inputs-1")
    first = submodels.reconstruct_split(truth.tracks, cams, truth.gps, [], config, SerialExecutor, 25.0, cache=cache)
    assert sorted(p.name for p in cache[0].iterdir()) == ["part-000.npz", "part-001.npz"]

    def refuse():
        raise AssertionError("the submodels were reconstructed again")

    again = submodels.reconstruct_split(truth.tracks, cams, truth.gps, [], config, refuse, 25.0, cache=cache)
    np.testing.assert_allclose(again.C, first.C, atol=1e-9)
    with pytest.raises(AssertionError, match="reconstructed again"):
        submodels.reconstruct_split(truth.tracks, cams, truth.gps, [], config, refuse, 25.0,
                                    cache=(cache[0], "inputs-2"))


def test_cancel_stops_the_submodels_and_their_workers():
    """Cancelled while the submodels grow on a process pool: Canceled, and no worker left running."""
    import multiprocessing
    import threading
    import time

    from alignkit.core.cancel import Canceled
    from alignkit.core.executor import ProcessExecutor

    truth = survey(rows=6, cols=10, gps_noise_h=1.0, gps_noise_v=2.0, seed=5)
    before = set(multiprocessing.active_children())  # another test's pool may still be winding down
    cancel_at = time.monotonic() + 1.0
    with pytest.raises(Canceled):
        submodels.reconstruct_split(truth.tracks, cameras_for(60), truth.gps, [], AlignConfig(submodel_photos=20),
                                    lambda: ProcessExecutor(2), 30.0, is_canceled=lambda: time.monotonic() > cancel_at)
    assert not [p for p in multiprocessing.active_children() if p not in before and p.is_alive()]
    # Nothing is left that would hold the interpreter's exit: the pool's threads end (its tasks are
    # bigger than a pipe's buffer, so one was being written when the workers died).
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join(timeout=30.0)
            assert not thread.is_alive(), f"{thread.name} still runs after the cancel"
