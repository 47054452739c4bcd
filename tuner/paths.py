"""Where Tuner keeps what it writes, and how it writes it safely."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
STARTER_DATASETS = REPO_ROOT / "datasets"


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
    def ratings_db(self) -> Path:
        return self.root / "ratings.db"


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` so a reader sees the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")
