"""Observation lookups of the incremental mapper (core/reconstruction.py) that do not scan the block.

Each registration step touches one new image and its neighbours; finding their observations by a
mask over every observation of the block made each step cost as much as the block, so the whole
reconstruction grew with its square. These lookups go through two indexes built once (observations
by image, and by track: the mapper keeps them sorted by track) and the covisibility graph, so a step
costs what its images see. A mixin of the mapper: it reads obs_track (sorted), obs_image, obs_valid,
obs_ok, registered, component, has_point, point_comp, n_images, n_tracks and covis.
"""
import numpy as np


def ranges(lo, hi):
    """Concatenation of np.arange(lo[k], hi[k]) over k, vectorised."""
    lo = np.asarray(lo, np.int64)
    n = np.asarray(hi, np.int64) - lo
    if not len(n):
        return np.zeros(0, np.int64)
    return np.arange(int(n.sum()), dtype=np.int64) - np.repeat(np.cumsum(n) - n - lo, n)


class ObservationIndex:
    def init_observation_index(self):
        from scipy.sparse import coo_matrix

        self.by_image = np.argsort(self.obs_image, kind="stable")  # observation indices, image by image
        self.image_start = np.searchsorted(self.obs_image[self.by_image], np.arange(self.n_images + 1))
        self.track_start = np.searchsorted(self.obs_track, np.arange(self.n_tracks + 1))
        pairs = np.array(list(self.covis), np.int64).reshape(-1, 2)
        a = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(self.n_images,) * 2)
        self.covisible = (a + a.T).tocsr()  # images sharing at least one track

    def obs_of_images(self, images):
        """Every observation of `images`, image by image (ascending within an image)."""
        images = np.atleast_1d(np.asarray(images, np.int64))
        return self.by_image[ranges(self.image_start[images], self.image_start[images + 1])]

    def obs_of_tracks(self, tracks):
        """Every observation of `tracks` (ascending when the tracks are)."""
        tracks = np.atleast_1d(np.asarray(tracks, np.int64))
        return ranges(self.track_start[tracks], self.track_start[tracks + 1])

    def is_active(self, obs, comp=None):
        """Which of `obs` are inliers of a point, in a registered image of the point's component (and `comp`)."""
        img, trk = self.obs_image[obs], self.obs_track[obs]
        m = self.obs_ok[obs] & self.registered[img] & self.has_point[trk] & (self.component[img] == self.point_comp[trk])
        if comp is not None:
            m &= self.component[img] == comp
        return m

    def active_obs(self, comp=None):
        """Active observations of the whole block (or of component `comp`), ascending."""
        return np.flatnonzero(self.is_active(np.arange(len(self.obs_track)), comp))

    def local_obs(self, comp, images):
        """Active observations of `comp` of every track `images` see actively, ascending: the same as
        the active observations of `comp` restricted to those tracks, without a scan of the block."""
        obs = self.obs_of_images(images)
        tracks = np.unique(self.obs_track[obs[self.is_active(obs, comp)]])
        obs = self.obs_of_tracks(tracks)
        return obs[self.is_active(obs, comp)]

    def neighbours(self, img, comp, limit):
        """Registered images of `comp` sharing the most points with `img` (including img)."""
        counts = np.bincount(self.obs_image[self.local_obs(comp, img)], minlength=self.n_images)
        counts[img] = 0
        nb = np.argsort(-counts, kind="stable")[:limit]
        return np.concatenate([[img], nb[counts[nb] > 0]])

    def frontier(self, comp):
        """Unregistered images sharing a track with a registered image of `comp`: the only ones that can
        see a point of `comp` (its points are triangulated from its registered images)."""
        inside = (self.registered & (self.component == comp)).astype(np.float64)
        return np.flatnonzero((self.covisible @ inside > 0) & ~self.registered)
