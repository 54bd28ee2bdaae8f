"""The mapper's observation lookups (core/observations.py) against their definitions by whole-block masks."""
import numpy as np

from alignkit.core.observations import ObservationIndex, ranges


class _Block(ObservationIndex):
    """A random block in the mapper's layout: observations sorted by track, two components, some
    images unregistered, some observations invalid or outliers, some tracks without a point."""

    def __init__(self, seed=0, n_images=30, n_tracks=400):
        rng = np.random.default_rng(seed)
        tracks, images = [], []
        for t in range(n_tracks):
            centre = rng.integers(n_images)
            seen = np.unique(np.clip(centre + rng.integers(-3, 4, rng.integers(2, 7)), 0, n_images - 1))
            tracks += [t] * len(seen)
            images += list(seen)
        self.obs_track, self.obs_image = np.array(tracks), np.array(images)
        self.n_images, self.n_tracks = n_images, n_tracks
        k = len(tracks)
        self.obs_valid = rng.random(k) > 0.05
        self.obs_ok = self.obs_valid & (rng.random(k) > 0.1)
        self.registered = rng.random(n_images) > 0.3
        self.component = np.where(self.registered, (np.arange(n_images) >= 20).astype(int), -1)
        # A point is triangulated from valid observations in registered images of its component.
        self.has_point = np.zeros(n_tracks, bool)
        self.point_comp = np.full(n_tracks, -1)
        for t in np.flatnonzero(rng.random(n_tracks) > 0.2):
            seen = self.obs_image[(self.obs_track == t) & self.obs_valid]
            seen = seen[self.registered[seen]]
            if len(seen) >= 2 and (self.component[seen] == self.component[seen[0]]).sum() >= 2:
                self.has_point[t], self.point_comp[t] = True, self.component[seen[0]]
        self.covis = {}
        for t in range(n_tracks):
            seen = self.obs_image[(self.obs_track == t) & self.obs_valid]
            for a in seen:
                for b in seen[seen > a]:
                    self.covis[(int(a), int(b))] = self.covis.get((int(a), int(b)), 0) + 1
        self.init_observation_index()

    def active_mask(self, comp):
        img, trk = self.obs_image, self.obs_track
        return (self.obs_ok & self.registered[img] & self.has_point[trk] & (self.component[img] == self.point_comp[trk])
                & (self.component[img] == comp))


def test_ranges_concatenates_aranges():
    assert ranges([3, 10, 5], [6, 10, 7]).tolist() == [3, 4, 5, 5, 6]
    assert ranges([], []).tolist() == []


def test_lookups_equal_their_whole_block_definitions():
    b = _Block()
    for img in range(b.n_images):
        assert b.obs_of_images(img).tolist() == np.flatnonzero(b.obs_image == img).tolist()
    assert b.obs_of_tracks([4, 2]).tolist() == np.flatnonzero(b.obs_track == 4).tolist() + np.flatnonzero(
        b.obs_track == 2).tolist()
    for comp in (0, 1):
        active = b.active_mask(comp)
        assert b.active_obs(comp).tolist() == np.flatnonzero(active).tolist()
        images = np.flatnonzero(b.component == comp)[:3]
        seen = np.isin(b.obs_track, b.obs_track[active & np.isin(b.obs_image, images)])
        assert b.local_obs(comp, images).tolist() == np.flatnonzero(active & seen).tolist()
        # Every unregistered image that sees a point of comp is on the frontier.
        cand = b.obs_valid & ~b.registered[b.obs_image] & b.has_point[b.obs_track] & (b.point_comp[b.obs_track] == comp)
        frontier = set(b.frontier(comp).tolist())
        assert set(b.obs_image[cand].tolist()) <= frontier
        assert not b.registered[list(frontier)].any()
