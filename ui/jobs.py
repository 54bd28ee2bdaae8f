"""The dock's background work: core calls and file writing only, run in a QgsTask's worker thread."""
import json
import os

from . import layers as layer_loader


def preview_photos(folder, priors_gpkg, target_crs, progress, is_canceled):
    """Camera priors of a folder: counts, camera model, suggested CRS and the priors GeoPackage."""
    from ..core import camera
    from ..core import priors as priors_core
    from ..core.cancel import check
    from ..core.gpkg import write_geopackage

    progress(0.0, "reading EXIF/XMP")
    priors = camera.read_priors(folder, progress=lambda f, m="": progress(0.9 * f), is_canceled=is_canceled)
    check(is_canceled)
    with_gps = [p for p in priors if p.lat is not None and p.lon is not None]
    unusable = [p for p in priors if p.status == "unusable"]
    models = {}
    for p in priors:
        if p.status != "unusable":
            models.setdefault(f"{p.make or '?'} {p.model or '?'} {p.width}x{p.height}", p)
    cameras = "; ".join(
        f"{key}, focal {p.focal_px:.0f} px ({p.focal_source})" if p.focal_px else key for key, p in models.items()
    )
    suggested = priors_core.default_crs(priors) if with_gps else ""
    text = (
        f"{len(priors)} photos, {len(with_gps)} with GPS, {len(unusable)} unusable. "
        f"Camera: {cameras or 'unknown'}"
    )
    gpkg = ""
    if with_gps:
        progress(0.9, "writing predicted cameras and footprints")
        crs = target_crs or suggested
        write_geopackage(priors_gpkg, crs, priors_core.prior_layers(priors, crs))
        gpkg = priors_gpkg
    # After prior_layers: it adds footprint problems to the priors.
    by_problem = {}
    for p in priors:
        for problem in p.problems:
            by_problem.setdefault(problem, []).append(p.name)
    problems = [
        f"{names[0] if len(names) == 1 else f'{len(names)} photos ({names[0]} ...)'}: {problem}"
        for problem, names in by_problem.items()
    ]
    progress(1.0, "preview done")
    return {
        "folder": folder,
        "folder_name": os.path.basename(os.path.normpath(folder)),
        "images": len(priors),
        "with_gps": len(with_gps),
        "unusable": len(unusable),
        "cameras": list(models),
        "suggested_crs": suggested,
        "text": text,
        "problems": problems,
        "gpkg": gpkg,
    }


def align_photos(config, export_crs, progress, is_canceled):
    """The pipeline (which also writes the HTML report), then optionally a copy in the project CRS."""
    from ..core import pipeline

    summary = pipeline.run(config, progress, is_canceled)
    report_path = summary["outputs"].get("report", "")
    gpkg = config.output
    if export_crs and export_crs != (summary or {}).get("crs"):
        stem = os.path.splitext(config.output)[0]
        gpkg = layer_loader.reproject_geopackage(
            config.output, f"{stem}_{export_crs.replace(':', '')}.gpkg", export_crs, list(layer_loader.RESULT_STYLES)
        )
    return {"gpkg": gpkg, "summary": summary, "report": report_path, "output": config.output}


def stack_summary(output_folder):
    """One line from transforms.json: how many images were aligned or rejected."""
    path = os.path.join(output_folder, "transforms.json")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return f"Image stack written to {output_folder}"
    statuses = [img.get("status") for img in data.get("images", [])]
    return (
        f"{statuses.count('aligned')} images aligned to {data.get('reference')} ({data.get('model')}), "
        f"{statuses.count('rejected')} rejected; written to {output_folder}"
    )
