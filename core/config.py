"""Configuration of the photo-alignment job. Every default carries a one-line reason."""
from dataclasses import asdict, dataclass, fields


@dataclass
class AlignConfig:
    images: str = ""  # folder of photos (read only; never written to)
    output: str = ""  # GeoPackage to write; the summary JSON, PLY and report go beside it
    workspace: str = ""  # stage products; default: "<output stem>_workspace" beside the output
    target_crs: str = ""  # e.g. "EPSG:32615"; empty: the UTM zone of the photos' GPS centroid

    # --- features ---
    max_image_size: int = 3200  # long side of the working image in pixels, as COLMAP's default
    max_features: int = 8000  # per image; more slows matching with little gain on drone overlap
    sift_contrast_threshold: float = 0.02  # lower than OpenCV's 0.04: keeps features on low-texture ground
    sift_doubled_octave: bool = False  # OpenCV's doubled first octave: 3x the time at 3200 px for -2% matches
    sift_max_tile_pixels: int = 3_000_000  # with the doubled octave, SIFT in strips: ~0.8 GB per worker, not 1.4
    root_sift: bool = True  # RootSIFT descriptors (Hellinger distance): more correct matches for the same cost

    # --- candidate pairs ---
    pair_neighbors: int = 8  # k nearest GPS neighbours tried per image: O(N*k) matching
    pair_overlap_margin: float = 1.0  # also pair images closer than this many footprint radii (brighton: 1.5 adds 50% pairs, 7% inliers)
    exhaustive_below: int = 30  # without GPS, match all pairs when there are fewer images than this
    pair_sequential_window: int = 5  # without GPS (large sets), pair each photo with the next few in capture time

    # --- matching ---
    lowe_ratio: float = 0.8  # Lowe's ratio test threshold (0.8 as in his paper)
    ransac_threshold_px: float = 1.5  # epipolar inlier threshold in working-image pixels
    min_inliers: int = 30  # pairs with fewer verified matches are dropped
    matcher: str = "flann"  # "flann" or "bf": FLANN keeps 98% of brute force's verified matches at 1/5 the time
    verification: str = "magsac"  # "magsac", "accurate" or "ransac" (OpenCV USAC): within 3% of each other
    homography_ratio: float = 0.8  # a homography explaining this share of the inliers marks a planar/rotation pair
    guided_match_features: int = 3000  # strongest features matched first to guide the full search
    guided_match_radius: float = 0.06  # guided search window (cells), as a fraction of the image's long side
    seed: int = 42  # every RNG in the pipeline derives from this

    # --- reconstruction and bundle adjustment ---
    min_triangulation_angle_deg: float = 1.5  # rays closer than this give depth-unstable points
    max_reproj_error_px: float = 4.0  # observations beyond this are outliers after each adjustment
    robust_loss: str = "huber"  # "huber", "cauchy", "soft_l1" or "linear" (scipy loss names)
    robust_scale_px: float = 1.0  # pixel scale where the robust loss starts to down-weight
    focal_px: float = 0.0  # calibrated focal (px of the full-size photos) for every photo; 0 = from EXIF
    refine_focal: bool = True  # self-calibrate focal (held near the EXIF prior, see focal_prior_sigma)
    refine_distortion: bool = True  # estimate radial k1, k2 per camera model
    focal_prior_sigma: float = 0.05  # relative std of the EXIF focal prior: damps focal/height drift
    gps_sigma_h_m: float = 0.0  # horizontal GPS std; 0 = estimate from the residuals
    gps_sigma_v_m: float = 0.0  # vertical GPS std; 0 = estimate from the residuals
    altitude_reference: str = "egm96"  # EXIF GPS altitude's meaning: egm96 (DJI: ~MSL; an assumption), ellipsoidal, egm2008, offset
    altitude_offset_m: float = 0.0  # with altitude_reference "offset": ellipsoidal height = GPS altitude + this
    min_registration_inliers: int = 20  # PnP inliers needed to register an image (fewer: pose unreliable)
    registration_attempts: int = 5  # best-candidate images tried by PnP before starting a new component
    initial_pair_attempts: int = 30  # candidate initial pairs tried (most shared tracks first)
    local_ba_images: int = 8  # neighbours adjusted with each newly registered image (the rest fixed)
    # global adjustment whenever the component grew by this factor; the local ones in between carry
    # the GPS (240-photo block: 1.25 -> 2 shape 8.89 -> 8.94 mm)
    global_ba_growth: float = 2.0
    # blocks of more photos (all with GPS) are reconstructed as overlapping submodels of at most this
    # many, in parallel on the executor, merged and finished whole (core/submodels.py); 0 = never.
    # 1,000-photo block, 2 workers: one model 869 s, 4 submodels of 250 776 s, 2 of 500 991 s.
    submodel_photos: int = 250
    ba_max_iterations: int = 50  # least-squares function evaluations per adjustment
    complete_tracks: bool = True  # look for each point by image correlation in the photos that see it unmatched
    ba_points_per_image: int = 800  # points per image in adjustments (spread, longest tracks); others follow; 0 = all
    # the last adjustment's points per image (0 = all): 18-photo generated block 6.5 mm with 800, 1.2 mm with 4000
    ba_final_points_per_image: int = 4000

    # --- ground control ---
    gcp_file: str = ""  # gcp_list.txt (OpenDroneMap) or ground_control_points.json (OpenSfM); empty = GPS only
    check_points: str = ""  # comma-separated names of points only checked, never used in the adjustment
    reference_dem: str = ""  # raster (any CRS) the sparse ground is tied to vertically when there is no control

    # --- execution ---
    workers: int = 0  # worker processes for per-image / per-pair work; 0 = number of CPU cores
    executor: str = ""  # empty = the local process pool; tcp://host:port = a Dask scheduler (shared storage)

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, values):
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown configuration keys: {', '.join(sorted(unknown))}")
        return cls(**values)


# Quality presets offered in the dock and Processing: (working size, feature count).
DEFAULT_PRESET = "balanced"  # the dock's and Processing's default (the fields' defaults above are "accurate")
PRESETS = {
    "fast": {"max_image_size": 1600, "max_features": 4000},
    "balanced": {"max_image_size": 2400, "max_features": 6000},
    "accurate": {"max_image_size": 3200, "max_features": 8000},  # = the defaults above
}
