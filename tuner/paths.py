"""Where Tuner keeps what it writes, and how it writes it safely."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
import threading
import unicodedata
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
STARTER_DATASETS = REPO_ROOT / "datasets"

# --- inputs: upload size, names, paths ----------------------------------------------
# The one upload limit: Gradio refuses a bigger upload (launch(max_file_size=max_upload()))
# and the importers refuse a bigger file (tuner.data.MAX_FILE_BYTES). TUNER_MAX_UPLOAD
# ("20mb", "500kb", "1gb") overrides it.
MAX_UPLOAD = "50mb"
_SIZE = re.compile(r"([0-9]+)(b|kb|mb|gb)")
_UNITS = {"b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3}  # Gradio's units (FileSize): powers of 1024


def upload_bytes(size: str) -> int:
    """ "50mb" → 52428800; a ValueError says what a size looks like."""
    text = str(size).strip().lower().replace(" ", "")
    match = _SIZE.fullmatch(text)
    if not match or int(match[1]) == 0:
        raise ValueError(f"upload limit {size!r} is not a size like 50mb, 500kb or 1gb")
    return int(match[1]) * _UNITS[match[2]]


def max_upload(env: dict | None = None) -> str:
    """The upload limit as Gradio's launch(max_file_size=...) takes it, e.g. "50mb"."""
    env = os.environ if env is None else env
    text = str(env.get("TUNER_MAX_UPLOAD") or MAX_UPLOAD).strip().lower().replace(" ", "")
    try:
        upload_bytes(text)
    except ValueError as exc:
        raise ValueError(f"TUNER_MAX_UPLOAD: {exc}") from None
    return text


NAME_MAX = 80  # characters in a dataset, run or export name (file systems allow 255 bytes)
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_NAME_UNSAFE_NO_DOT = re.compile(r"[^A-Za-z0-9_-]+")
_PERCENT_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")


def plain_name(text, max_length: int | None = None, dots: bool = True, trim: str = ".-_") -> str:
    """`text` made of letters, digits, '-', '_' (and '.' unless `dots` is False) only:
    each run of other characters becomes one '-', then `trim`'s characters go from
    both ends and the rest is cut to `max_length`; "" when nothing is left.

    It cleans and never refuses, for a name derived from other text (a run id, a
    file's stem): "2026-run v2/../x" → "2026-run-v2-..-x". A name a person gives
    goes through safe_name instead, which refuses what could be a path.
    """
    unsafe = _NAME_UNSAFE if dots else _NAME_UNSAFE_NO_DOT
    return unsafe.sub("-", "" if text is None else str(text)).strip(trim)[:max_length]


def _shown(text: str, limit: int = 60) -> str:
    return repr(text[:limit]) + ("…" if len(text) > limit else "")


def safe_name(text, what: str = "name", max_length: int = NAME_MAX) -> str:
    """A name that is one plain file name inside its folder, or a ValueError saying why not.

    Letters, digits, '-', '_' and '.' (other characters become '-'; accents are
    dropped: "Café FAQ" → "Cafe-FAQ"); never a leading '.' or '-', never "..".
    Anything that could make it a path is refused, not cleaned, so an attempt is
    seen rather than silently renamed: a '/' or '\\' (also fullwidth, or
    %-encoded as in %2e%2e%2f), a NUL or other control character.
    """
    raw = "" if text is None else str(text)
    shown = _shown(raw)
    normal = unicodedata.normalize("NFKC", raw)  # fullwidth "．．／" is "../" to some tools
    if "\x00" in normal:
        raise ValueError(f"{what} {shown}: a NUL byte is not allowed in a name")
    if any(ord(c) < 32 or ord(c) == 127 for c in normal):
        raise ValueError(f"{what} {shown}: control characters (tabs, line breaks…) are not allowed in a name")
    if "/" in normal or "\\" in normal:
        raise ValueError(f"{what} {shown} is a path, not a name (it has a '/' or '\\'): "
                         "give a plain name such as support-faq")
    if _PERCENT_ESCAPE.search(raw):
        raise ValueError(f"{what} {shown}: %-encoded characters (such as %2e or %2f) are not allowed in a name")
    if normal.strip() in (".", ".."):
        raise ValueError(f"{what} {shown}: '.' and '..' are not names")
    ascii_text = "".join(c for c in unicodedata.normalize("NFKD", normal) if not unicodedata.combining(c))
    cleaned = re.sub(r"\.{2,}", ".", re.sub(r"-{2,}", "-", plain_name(ascii_text, trim=".-")))
    if not cleaned:
        raise ValueError(f"{what} {shown} has no letters or digits to make a file name of: "
                         "use letters, digits, '-', '_' or '.'")
    if len(cleaned) > max_length:
        raise ValueError(f"{what} {_shown(cleaned, 40)} is {len(cleaned)} characters long; "
                         f"at most {max_length}")
    return cleaned


def inside(root: Path, *parts) -> Path:
    """`root` joined with `parts`, resolved (symlinks followed), or a ValueError
    when the result is not within `root` ('..', an absolute part, or a symlink
    that points elsewhere). `root` itself may be a symlink: it is the owner's choice."""
    texts = [os.fspath(part) for part in parts]
    shown = _shown(os.path.join(*texts)) if texts else "''"
    if any("\x00" in t for t in texts):
        raise ValueError(f"{shown}: a NUL byte is not allowed in a path")
    try:
        base = Path(root).resolve()
        target = base.joinpath(*texts).resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop, a name too long
        raise ValueError(f"{shown}: not a usable path ({exc})") from None
    if not target.is_relative_to(base):
        raise ValueError(f"{shown} leads outside the folder {base.name}/ (through '..', an absolute path "
                         "or a symbolic link); refused")
    return target


def data_root(env: dict | None = None, space_volume: Path = Path("/data")) -> Path:
    """The one folder for everything the app writes.

    `TUNER_HOME` wins; on a Hugging Face Space with persistent storage `/data`
    exists and survives restarts (the container's own disk does not); otherwise
    a git-ignored `.tuner/` beside the code.
    """
    env = os.environ if env is None else env
    if env.get("TUNER_HOME"):
        root = Path(env["TUNER_HOME"]).expanduser()
    elif space_volume.is_dir():
        root = space_volume / "tuner"
    else:
        root = REPO_ROOT / ".tuner"
    root.mkdir(parents=True, exist_ok=True)
    return root.resolve()


class Layout:
    """Named sub-folders of a data root, created on first use."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def _dir(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def models(self) -> Path:
        return self._dir("models")

    @property
    def runs(self) -> Path:
        return self._dir("runs")

    @property
    def datasets(self) -> Path:
        return self._dir("datasets")

    @property
    def preferences(self) -> Path:
        """Preference data built from an evaluation's scores for a DPO or KTO run."""
        return self._dir("preferences")

    @property
    def ratings_db(self) -> Path:
        return self.root / "ratings.db"


class StorageError(OSError):
    """A save the disk refused (full, over a size limit, read-only, failing).

    The message names what was being saved, where, and the problem, so a UI can
    show it as is; the writer has left nothing half-written behind.
    """

    def __str__(self) -> str:
        return self.args[0] if self.args else "storage error"


# the failures a person can act on, in their words (errno's own text follows in brackets)
DISK_PROBLEMS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EFBIG: "the file would be larger than this disk or process allows",
    errno.EIO: "the disk reported an input/output error",
    errno.EROFS: "the disk is mounted read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}


def storage_error(exc: OSError, what: str, where) -> StorageError:
    """`exc` (a failed write) as a StorageError saying what was lost and why."""
    if isinstance(exc, StorageError):
        return exc
    problem = DISK_PROBLEMS.get(exc.errno) or "the write failed"
    detail = exc.strerror or str(exc)
    error = StorageError(f"Could not save {what} in {where}: {problem} ({detail}). Nothing was half-written; "
                         "free some disk space or fix the disk, then try again.")
    error.errno, error.filename = exc.errno, str(where)
    return error


def fsync_dir(folder: Path) -> None:
    """Make a rename or link in `folder` survive a power cut (where the OS allows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory; the rename itself is still atomic
    finally:
        os.close(fd)


@contextmanager
def replacing(path: Path, what: str | None = None, leftovers: Iterable[str] = ()) -> Iterator[Path]:
    """A temp file beside `path` for the block to write, then fsynced and renamed
    onto `path`: a reader sees the old file or the new one, never half of one.

    On any error the temp file goes (with the files named by suffix in
    `leftovers`, such as SQLite's "-journal") and `path` is left as it was. With
    `what`, an OSError is raised as StorageError naming `what` and the folder;
    without it, as it came.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
    except OSError as exc:
        if what is None:
            raise
        raise storage_error(exc, what, path.parent) from exc
    tmp = Path(name)
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        for leftover in (tmp, *(Path(f"{tmp}{suffix}") for suffix in leftovers)):
            leftover.unlink(missing_ok=True)
        if isinstance(exc, OSError) and what is not None:
            raise storage_error(exc, what, path.parent) from exc
        raise
    fsync_dir(path.parent)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str, what: str | None = None) -> None:
    """Write `text` so a reader sees the old file or the new one, never half.

    A failed write (disk full, size limit, I/O error) removes the temp file and
    raises StorageError naming `what` (default: the file's name) and the folder.
    """
    with replacing(path, what or Path(path).name) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)


def atomic_write_json(path: Path, obj, what: str | None = None) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n", what)


def write_new(folder: Path, text: str, names: Iterable[str], what: str) -> Path:
    """Write `text` as the first of `names` (file names in `folder`) that is free, never
    over an existing file, and return its path.

    The file is written aside and then hard-linked into place: the link fails if
    the name was taken meanwhile, so two writers at once cannot overwrite each
    other. A full or failing disk raises StorageError naming `what` and leaves no
    file behind.
    """
    folder = Path(folder)
    tmp = folder / f".new.{os.getpid()}.{threading.get_ident()}.{os.urandom(3).hex()}.tmp"
    atomic_write_text(tmp, text, what)
    try:
        for name in names:
            path = inside(folder, name)
            try:
                os.link(tmp, path)
            except FileExistsError:
                continue
            except OSError as exc:  # the directory itself may be out of space
                raise storage_error(exc, what, folder) from exc
            fsync_dir(folder)
            return path
        raise ValueError(f"no free name for {what} in {folder}")
    finally:
        tmp.unlink(missing_ok=True)


def replace_folder(tmp: Path, target: Path) -> None:
    """Put the folder `tmp` in the place of `target`, which may exist and hold files
    (os.replace cannot replace a non-empty folder, so the old one is moved aside
    first and put back if the rename fails). `tmp` is removed on failure."""
    tmp, target = Path(tmp), Path(target)
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{os.getpid()}-{os.urandom(3).hex()}"
        os.replace(target, old)
    try:
        os.replace(tmp, target)
    except BaseException:
        if old is not None:
            os.replace(old, target)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
