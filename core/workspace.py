"""The workspace: a folder of plain files (npy / npz / JSON), each written atomically.

A file appears under its final name only once complete (write to a temporary name in the same
folder, fsync, then os.replace), so a killed run never leaves a product that looks valid.
"""
import json
import os
import tempfile

import numpy as np


def _file_mode():
    umask = os.umask(0o022)  # read the umask (os has no getter) and put it back
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()  # mkstemp creates 0600 files; results should be readable like any other


def _atomic(path, write, suffix):
    path = os.fspath(path)
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json(path, obj):
    data = json.dumps(obj, indent=1, default=json_default, ensure_ascii=False).encode("utf-8")
    _atomic(path, lambda f: f.write(data), ".json")


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_npy(path, array):
    _atomic(path, lambda f: np.save(f, np.ascontiguousarray(array), allow_pickle=False), ".npy")


def write_npz(path, **arrays):
    _atomic(path, lambda f: np.savez(f, **{k: np.ascontiguousarray(v) for k, v in arrays.items()}), ".npz")


def read_npz(path):
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def atomic_output(path, write_to):
    """Produce a file of any format (GeoPackage, image ...) atomically.

    `write_to(tmp_path)` writes the whole file at a temporary path beside `path` with the same
    extension (drivers pick the format by extension); it is then renamed over `path`.
    """
    path = os.fspath(path)
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    stem, ext = os.path.splitext(os.path.basename(path))
    tmp = os.path.join(folder, f".tmp-{os.getpid()}-{stem}{ext}")
    try:
        write_to(tmp)
        os.replace(tmp, path)
    finally:
        for leftover in (tmp, tmp + "-journal", tmp + "-wal", tmp + "-shm"):
            if os.path.exists(leftover):
                os.remove(leftover)


def json_default(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
