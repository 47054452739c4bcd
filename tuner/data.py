"""Chat datasets: load, validate, split, save.

A dataset is a JSONL file, one example a line:
    {"messages": [{"role": "user", "content": ...}, {"role": "assistant", ...}], ...}
Extra keys (e.g. "category") are kept as metadata. Loading never fails on a
bad line: the line is skipped and reported by number, the valid rows are kept.
"""

from __future__ import annotations

import json
import os
import random
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

from tuner.paths import STARTER_DATASETS, atomic_write_text

ROLES = ("system", "user", "assistant")
SPLITS = ("train", "validation", "test")
SPLIT_FIELD = "split"  # a row's stored split, when its dataset version has one
MAX_FILE_BYTES = 50 * 1024 * 1024


@dataclass
class LoadResult:
    rows: list[dict]
    problems: list[str] = field(default_factory=list)  # "line 7: ..." per skipped line
    source: str = ""

    def summary(self) -> str:
        text = f"{len(self.rows)} rows loaded from {self.source}"
        if self.problems:
            shown = "; ".join(self.problems[:5])
            more = f"; and {len(self.problems) - 5} more" if len(self.problems) > 5 else ""
            text += f", {len(self.problems)} skipped: {shown}{more}"
        return text


def validate_row(obj) -> str | None:
    """The reason a parsed line is not a usable chat example, or None."""
    if not isinstance(obj, dict):
        return f"expected a JSON object, got {type(obj).__name__}"
    messages = obj.get("messages")
    if messages is None:
        return 'no "messages" field'
    if not isinstance(messages, list) or not messages:
        return '"messages" must be a non-empty list'
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            return f"message {i + 1} is not an object"
        role, content = msg.get("role"), msg.get("content")
        if role not in ROLES:
            return f'message {i + 1} has role {role!r}; expected one of {", ".join(ROLES)}'
        if not isinstance(content, str):
            return f"message {i + 1} ({role}) has content of type {type(content).__name__}; expected text"
        if not content.strip():
            return f"message {i + 1} ({role}) has empty content"
        if role == "system" and i != 0:
            return f"message {i + 1}: a system message may only come first"
    roles = [m["role"] for m in messages if m["role"] != "system"]
    if "user" not in roles:
        return "no user turn"
    if roles[-1] != "assistant":
        return "the conversation does not end with an assistant reply"
    return None


def parse_jsonl(text: str, source: str = "") -> LoadResult:
    result = LoadResult(rows=[], source=source)
    # split on "\n" only: str.splitlines() also breaks on U+2028, \x85, \x1c…,
    # which JSON strings may hold raw, and would shift the line numbers
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            result.problems.append(f"line {number}: not valid JSON ({exc.msg})")
            continue
        except RecursionError:
            result.problems.append(f"line {number}: JSON nested too deeply")
            continue
        reason = validate_row(obj)
        if reason:
            result.problems.append(f"line {number}: {reason}")
        else:
            result.rows.append(obj)
    return result


def load_jsonl(path: Path) -> LoadResult:
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ValueError(f"{path.name}: {size / 1e6:.0f} MB is over the {MAX_FILE_BYTES // 2**20} MB limit")
    raw = path.read_bytes()
    try:
        # utf-8-sig drops a byte-order mark that would otherwise break line 1
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path.name}: not UTF-8 text (bad byte at offset {exc.start})") from None
    result = parse_jsonl(text, source=path.name)
    if not result.rows and not result.problems:
        raise ValueError(f"{path.name}: the file is empty")
    return result


def to_jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def slug(name: str) -> str:
    """A safe file/run name from any text: letters, digits, _ and - only."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", Path(name).stem).strip("-")[:60] or "dataset"


def save_dataset(rows: list[dict], name: str, folder: Path) -> Path:
    """Save rows as a new file; never overwrites (a clash gets a version suffix).

    The file is written aside and then hard-linked into place: the link fails if
    the name was taken meanwhile, so two saves at once cannot overwrite each other.
    """
    folder = Path(folder)
    base = slug(name)
    tmp = folder / f".{base}.{os.getpid()}.{threading.get_ident()}.tmp"
    atomic_write_text(tmp, to_jsonl(rows))
    try:
        version = 1
        while True:
            path = folder / (f"{base}.jsonl" if version == 1 else f"{base}-v{version}.jsonl")
            try:
                os.link(tmp, path)
                return path
            except FileExistsError:
                version += 1
    finally:
        tmp.unlink(missing_ok=True)


def available(user_folder: Path) -> dict[str, Path]:
    """Label → path for the starter datasets and the user's saved ones."""
    found = {}
    for path in sorted(STARTER_DATASETS.glob("*.jsonl")):
        found[f"starter: {path.stem}"] = path
    for path in sorted(Path(user_folder).glob("*.jsonl")):
        found[f"saved: {path.stem}"] = path
    return found


def splits(rows: list[dict], validation_fraction: float = 0.1, test_fraction: float = 0.2,
           seed: int = 0) -> dict[str, list[dict]]:
    """A seeded train/validation/test split, in the rows' original order.

    The test rows are the held-out prompts for Compare; the validation rows give
    the validation-loss curve. Each non-zero fraction gets at least one row while
    at least one row is left to train on. When every row carries a stored
    `split` field ("train", "validation" or "test"), that split is used as is.
    """
    stored = {row.get(SPLIT_FIELD) for row in rows}
    if rows and stored <= set(SPLITS):
        # a dataset version saved with its split keeps it: reproducible, and
        # whatever the split was (e.g. stratified), training and Compare agree
        return {name: [r for r in rows if r[SPLIT_FIELD] == name] for name in SPLITS}
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    sizes = {}
    room = len(rows) - 1
    for name, fraction in (("test", test_fraction), ("validation", validation_fraction)):
        n = max(1, round(len(rows) * fraction)) if fraction > 0 else 0
        sizes[name] = max(0, min(n, room))
        room -= sizes[name]
    test_idx = set(order[:sizes["test"]])
    val_idx = set(order[sizes["test"]:sizes["test"] + sizes["validation"]])
    return {
        "train": [r for i, r in enumerate(rows) if i not in test_idx and i not in val_idx],
        "validation": [r for i, r in enumerate(rows) if i in val_idx],
        "test": [r for i, r in enumerate(rows) if i in test_idx],
    }


def prompt_of(row: dict) -> list[dict]:
    """The conversation up to (not including) its last assistant reply."""
    return row["messages"][:-1]


def last_user_text(row: dict) -> str:
    return next(m["content"] for m in reversed(row["messages"]) if m["role"] == "user")


def preview(rows: list[dict]) -> list[list[str]]:
    """Rows for a table: user turn, assistant reply, turns, metadata."""
    table = []
    for row in rows:
        msgs = row["messages"]
        meta = {k: v for k, v in row.items() if k != "messages"}
        table.append([
            last_user_text(row),
            msgs[-1]["content"],
            str(len([m for m in msgs if m["role"] != "system"])),
            json.dumps(meta, ensure_ascii=False) if meta else "",
        ])
    return table
