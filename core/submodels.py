"""Split and merge: a large block reconstructed as overlapping submodels, merged, then finished whole.

Incremental growth costs more per photo the larger the model (its global adjustments grow with it),
and it runs on one core. Above `AlignConfig.submodel_photos` photos the block is cut by GPS into
parts of at most that many photos (recursive median cuts across the longer side), each widened by
the photos within `overlap` metres of it, so that neighbouring parts share a band of photos. Every
part grows and is adjusted with its GPS as an independent task on the executor (the process pool or
a Dask cluster), without track completion. The parts are then merged through their shared photos
(a similarity each, from the camera centres they share; parts that share too few keep their GPS
placement), and the merged model is finished like a single one (core/reconstruction.py: its tracks
triangulated whole, photos no part registered added, the image-only adjustment, the GPS fit, track
completion), so the merged result is the same kind of model as a single run's.
"""
import dataclasses
import hashlib
import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from scipy.spatial import cKDTree

from . import workspace
from .georef import Georeferencing

MIN_SHARED_PHOTOS = 3  # photos a part must share with the merged model to be fitted onto it


def plan_parts(positions, max_photos, overlap_m):
    """Photo indices of each part: `positions` (N, 2+) GPS in metres; cores of at most max_photos
    photos by recursive median cuts across the longer side, each widened by the photos within
    overlap_m of one of its own. Returns a list of sorted int arrays (one part when N <= max_photos)."""
    xy = np.asarray(positions, np.float64)[:, :2]
    cores, todo = [], [np.arange(len(xy))]
    while todo:
        idx = todo.pop()
        if len(idx) <= max_photos:
            cores.append(idx)
            continue
        pts = xy[idx] - xy[idx].mean(axis=0)
        axis = np.linalg.svd(pts, full_matrices=False)[2][0]  # the block's longer side
        order = idx[np.argsort(pts @ axis, kind="stable")]
        half = len(order) // 2
        todo += [order[:half], order[half:]]
    if len(cores) == 1:
        return [np.sort(cores[0])]
    tree = cKDTree(xy)
    parts = []
    for core in sorted(cores, key=lambda c: c.min()):
        near = tree.query_ball_point(xy[core], r=overlap_m)
        parts.append(np.unique(np.concatenate([core, *[np.asarray(n, np.int64) for n in near]])))
    return parts


def subset_tracks(tracks, images):
    """The observations of `images` (sorted global indices) with local image and track indices;
    tracks seen by fewer than two of them are dropped."""
    images = np.asarray(images, np.int64)
    local = np.full(int(max(images.max(), np.max(tracks.obs_image, initial=0))) + 1, -1, np.int64)
    local[images] = np.arange(len(images))
    obs_image = np.asarray(tracks.obs_image, np.int64)
    sel = np.flatnonzero(local[obs_image] >= 0)
    track_ids, inverse, count = np.unique(np.asarray(tracks.obs_track)[sel], return_inverse=True, return_counts=True)
    keep = count[inverse] >= 2
    sel, inverse = sel[keep], inverse[keep]
    kept_tracks = np.flatnonzero(count >= 2)
    renumber = np.full(len(track_ids), -1, np.int64)
    renumber[kept_tracks] = np.arange(len(kept_tracks))
    return SimpleNamespace(
        obs_track=renumber[inverse], obs_image=local[obs_image[sel]],
        obs_xy=np.asarray(tracks.obs_xy, np.float64)[sel],
        track_rgb=np.asarray(tracks.track_rgb)[track_ids[kept_tracks]])


def part_pair_poses(pair_matches, images):
    """The verified pairs inside a part, as (i, j, R_rel, t_rel) in its local image indices (what the
    initial pair needs; the matches themselves are in the tracks)."""
    local = {int(g): k for k, g in enumerate(images)}
    poses = []
    for pm in pair_matches or []:
        i, j = local.get(int(pm.i)), local.get(int(pm.j))
        if i is not None and j is not None and getattr(pm, "R_rel", None) is not None:
            poses.append(SimpleNamespace(i=i, j=j, R_rel=pm.R_rel, t_rel=pm.t_rel))
    return poses


def reconstruct_part(task):
    """One submodel, in a worker: (its number, its largest component's poses and lens, in the block's
    ENU frame when it could be aligned to its GPS)."""
    from .reconstruction import reconstruct  # here: a worker imports what it runs

    t0 = time.perf_counter()
    images = task["images"]
    rec = reconstruct(task["tracks"], task["cameras"], task["gps"], task["poses"], task["config"], submodel=True)
    comps, size = np.unique(rec.component[rec.registered], return_counts=True)
    keep = rec.registered & (rec.component == comps[np.argmax(size)]) if len(comps) else rec.registered
    return task["number"], {"images": images, "registered": keep, "R": rec.R, "C": rec.C, "focal": rec.focal,
                            "k1": rec.k1, "k2": rec.k2, "distortion_held": rec.distortion_held,
                            "distortion_wald": rec.distortion_wald,
                            "distortion_threshold": np.full(len(images), rec.distortion_threshold),
                            "georeferenced": rec.georeferenced,
                            "points": len(rec.points), "seconds": time.perf_counter() - t0,
                            "adjust_s": rec.timings["local_ba_s"] + rec.timings["global_ba_s"]}


def merge_parts(parts, n_images):
    """One model from the parts' poses: the part with most photos first, then always the part that
    shares most registered photos with what is merged, moved onto it by the similarity of the shared
    camera centres (robust to a photo a part got wrong). A photo keeps the pose of the first part
    that registered it. Returns dict(registered, R, C, and the LENS entries) over the block and a log."""
    registered = np.zeros(n_images, bool)
    R = np.full((n_images, 3, 3), np.nan)
    C = np.full((n_images, 3), np.nan)
    lens = np.full((n_images, len(LENS)), np.nan)
    log = []
    todo = sorted(range(len(parts)), key=lambda k: -int(parts[k]["registered"].sum()))
    while todo:
        shared = [int(registered[parts[k]["images"][parts[k]["registered"]]].sum()) for k in todo]
        k = todo.pop(int(np.argmax(shared)))
        p = parts[k]
        own = np.flatnonzero(p["registered"])
        glob = p["images"][own]
        Rp, Cp = p["R"][own], p["C"][own]
        both = registered[glob]
        if registered.any() and both.sum() >= MIN_SHARED_PHOTOS:
            (s, rot, t), _, _ = Georeferencing.robust_similarity(Cp[both], C[glob[both]])
            Cp, Rp = s * Cp @ rot.T + t, Rp @ rot.T
            gap = np.linalg.norm(Cp[both] - C[glob[both]], axis=1)
            log.append(f"submodel {k}: {len(own)} photos, merged through {int(both.sum())} shared photos "
                       f"(scale {s:.5f}, their centres {np.median(gap):.3f} m apart, median)")
        elif registered.any() and not p["georeferenced"]:  # no frame in common: its photos register again
            log.append(f"submodel {k}: {len(own)} photos share only {int(both.sum())} photos with the others "
                       f"and could not be placed on its GPS: left to register in the merged block")
            continue
        elif registered.any():
            log.append(f"submodel {k}: {len(own)} photos share only {int(both.sum())} photos with the others: "
                       f"kept where its GPS put it")
        else:
            log.append(f"submodel {k}: {len(own)} photos, the first")
        new = ~both
        R[glob[new]], C[glob[new]] = Rp[new], Cp[new]
        # A part saved before its distortion gate existed: not tested (so not held).
        lens[glob[new]] = np.column_stack([p.get(k, np.zeros(len(p["images"]))) for k in LENS])[own][new]
        registered[glob[new]] = True
    merged = {k: lens[:, col] for col, k in enumerate(LENS)}
    merged["distortion_held"] = merged["distortion_held"] == 1.0
    return {"registered": registered, "R": R, "C": C, **merged}, log


def part_config(config):
    """A part grows without track completion (the merged model completes its tracks once) and
    never splits again."""
    return dataclasses.replace(config, complete_tracks=False, submodel_photos=0)


PART_ARRAYS = ("images", "registered", "R", "C", "focal", "k1", "k2", "distortion_held", "distortion_wald",
               "distortion_threshold")
LENS = ("focal", "k1", "k2", "distortion_held", "distortion_wald", "distortion_threshold")  # per photo, merged


def _save_part(folder, stamp, number, part):
    """A finished submodel in the workspace (atomic), so that a cancelled or killed run resumes with it."""
    meta = {k: part[k] for k in part if k not in PART_ARRAYS}
    workspace.write_npz(Path(folder) / f"part-{number:03d}.npz", stamp=np.array([stamp]),
                        meta=np.array([json.dumps(meta, default=float)]), **{k: part[k] for k in PART_ARRAYS})


def _load_part(folder, stamp, number):
    """The submodel saved for the same inputs and photos, else None."""
    path = Path(folder) / f"part-{number:03d}.npz"
    if not path.exists():
        return None
    data = workspace.read_npz(path)
    if str(data.pop("stamp")[0]) != stamp:
        return None
    return {**json.loads(str(data.pop("meta")[0])), **data}


def reconstruct_split(tracks, cameras, gps_enu, pair_matches, config, make_executor, overlap_m,
                      progress=None, is_canceled=None, read_gray=None, cache=None):
    """The block as submodels when it is larger than config.submodel_photos and every photo has GPS;
    otherwise one model. make_executor() gives the executor the submodels and track completion run on
    (made only when used); cache: (folder, stamp of the inputs) where finished submodels are kept for a
    rerun. Returns a Reconstruction (core/reconstruction.py)."""
    from .reconstruction import reconstruct

    n = len(cameras)
    gps = None if gps_enu is None else np.asarray(gps_enu, np.float64).reshape(n, 3)
    limit = int(getattr(config, "submodel_photos", 0) or 0)
    if not limit or n <= limit or gps is None or not np.isfinite(gps).all():
        return reconstruct(tracks, cameras, gps_enu, pair_matches, config, progress, is_canceled, read_gray,
                           make_executor=make_executor)
    t0 = time.perf_counter()
    parts = plan_parts(gps, limit, overlap_m)
    sub_config = part_config(config)
    folder, stamp = cache if cache else (None, "")
    stamps = [hashlib.sha1(f"{stamp} {idx.tolist()}".encode(), usedforsecurity=False).hexdigest() for idx in parts]
    results = {k: _load_part(folder, stamps[k], k) for k in range(len(parts))} if folder else {}
    results = {k: r for k, r in results.items() if r is not None}
    todo = [{"number": k, "images": idx, "tracks": subset_tracks(tracks, idx), "cameras": [cameras[i] for i in idx],
             "gps": gps[idx], "poses": part_pair_poses(pair_matches, idx), "config": sub_config}
            for k, idx in enumerate(parts) if k not in results]
    if progress:
        progress(0.0, f"reconstructing {len(todo)} submodels of {min(map(len, parts))}-{max(map(len, parts))} photos"
                 + (f" ({len(results)} reused from the workspace)" if results else ""))
    if todo:
        if folder:
            Path(folder).mkdir(parents=True, exist_ok=True)
        with make_executor() as executor:
            for number, part in executor.map(reconstruct_part, todo, progress=progress, is_canceled=is_canceled,
                                             message="submodels reconstructed"):
                results[number] = part
                if folder:
                    _save_part(folder, stamps[number], number, part)
    del todo
    results = [results[k] for k in range(len(parts))]
    start, log = merge_parts(results, n)
    log = [f"split into {len(parts)} submodels of {', '.join(str(len(p)) for p in parts)} photos "
           f"(at most {limit} each and the photos within {overlap_m:.0f} m of them)"] + log
    log += [f"submodel of {len(r['images'])} photos: {int(r['registered'].sum())} registered, {r['points']} points, "
            f"{r['seconds']:.0f} s ({r['adjust_s']:.0f} s adjusting)" for r in results]
    parts_s = time.perf_counter() - t0
    rec = reconstruct(tracks, cameras, gps_enu, pair_matches, config, progress, is_canceled, read_gray, start=start,
                      make_executor=make_executor)
    rec.log[:0] = log
    rec.timings["submodels_s"] = parts_s
    rec.timings["total_s"] += parts_s
    return rec
