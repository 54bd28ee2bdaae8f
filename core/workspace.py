"""The workspace: a folder of plain files (npy / npz / JSON), each written atomically.

A file appears under its final name only once complete (write to a temporary name in the same
folder, fsync, then os.replace), so a killed run never leaves a product that looks valid.
"""
import contextlib
import errno
import glob
import json
import os
import tempfile
import time

import numpy as np

if os.name == "nt":  # pragma: no cover - exercised on Windows only
    import msvcrt
else:
    import fcntl


def _file_mode():
    umask = os.umask(0o022)  # read the umask (os has no getter) and put it back
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()  # mkstemp creates 0600 files; results should be readable like any other


def _atomic(path, write, suffix):
    path = os.fspath(path)
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    # Named after the product (".tmp-<name>.<random><suffix>"), so the next run can tell whose it is.
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{os.path.basename(path)}.", suffix=suffix, dir=folder)
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
    tmp = os.path.join(folder, f".tmp-{stem}{ext}.{os.getpid()}{ext}")  # see temporaries_of
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


# --------------------------------------------------------------------------- run locks
LOCK_SUFFIX = ".lock"


class LockedError(RuntimeError):
    """Another process holds the lock; `path` is the lock file, `pid` the holder's (None if unknown)."""

    def __init__(self, path, pid, what):
        self.path, self.pid = str(path), pid
        holder = f"PID {pid}" if pid else "a process whose PID could not be read"
        super().__init__(f"{what} is in use by another AlignKit run ({holder}; lock file {path})")


def _lock_fd(fd):
    """Try to lock an open file exclusively without waiting; False when another process holds it."""
    try:
        if os.name == "nt":  # pragma: no cover
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        else:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK, errno.EDEADLK):
            return False
        if exc.errno in (errno.ENOLCK, errno.ENOTSUP, errno.EOPNOTSUPP):
            return True  # a file system without locks (some network shares): run unguarded, as before
        raise


def _holder_pid(path):
    """The PID the lock's holder wrote into it; it writes right after locking, so wait a moment."""
    deadline = time.monotonic() + 1.0
    while True:
        try:
            with open(path, "rb") as f:
                f.seek(1)  # byte 0 is the one Windows locks
                text = f.read(32).decode("ascii", "replace").strip()
            if text.isdigit():
                return int(text)
        except OSError:
            pass
        if time.monotonic() > deadline:
            return None
        time.sleep(0.05)


@contextlib.contextmanager
def exclusive_lock(path, what):
    """Hold an exclusive lock on the file `path` (created) for the duration of the block.

    A second holder is refused at once with LockedError naming `what`, the lock file and the
    holder's PID: AlignKit refuses rather than waits, so a run never hangs behind another. The lock
    is the operating system's (flock; msvcrt on Windows): it dies with its process, so a killed
    run leaves no stale lock, only the file, which the next holder reuses and which is removed
    on release.
    """
    path = os.fspath(path)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, _FILE_MODE)
        try:
            locked = _lock_fd(fd)
        except BaseException:
            os.close(fd)
            raise
        if not locked:
            os.close(fd)
            raise LockedError(path, _holder_pid(path), what)
        try:  # the previous holder may have removed the file between our open and our lock
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f" {os.getpid()}\n".encode("ascii"))  # byte 0 left for the Windows lock
        yield path
    finally:
        if os.name != "nt":
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)  # while still locked: nobody can take a lock on a file that is going
        os.close(fd)
        if os.name == "nt":  # pragma: no cover - an open file cannot be removed there
            with contextlib.suppress(OSError):
                os.remove(path)


def temporaries_of(path):
    """The glob pattern of the temporaries that atomic writes of `path` use (see _atomic, atomic_output)."""
    return f".tmp-{glob.escape(os.path.basename(os.fspath(path)))}.*"


def remove_temporaries(folder, pattern=".tmp-*"):
    """Remove what killed atomic writes left in `folder` (files named `pattern`); returns their names.

    Call it only while holding the lock of whatever writes into `folder`: a running writer's
    temporaries look the same."""
    removed = []
    for leftover in glob.glob(os.path.join(glob.escape(os.fspath(folder)), pattern)):
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            os.remove(leftover)
            removed.append(os.path.basename(leftover))
    return sorted(removed)
