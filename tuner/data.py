"""Chat datasets: load, validate, split, save.

A dataset is a JSONL file, one example a line:
    {"messages": [{"role": "user", "content": ...}, {"role": "assistant", ...}], ...}
Extra keys (e.g. "category") are kept as metadata. Loading never fails on a
bad line: the line is skipped and reported by number, the valid rows are kept.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import random
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tuner.paths import (STARTER_DATASETS, atomic_write_json, inside, max_upload, plain_name, safe_name,
                         upload_bytes, write_new)

ROLES = ("system", "user", "assistant")
SPLITS = ("train", "validation", "test")
SPLIT_FIELD = "split"  # a row's stored split, when its dataset version has one
MAX_FILE_BYTES = upload_bytes(max_upload())  # the upload limit (tuner.paths.MAX_UPLOAD, TUNER_MAX_UPLOAD)


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


class NumberTooLong(ValueError):
    """A JSON integer longer than Python reads (sys.get_int_max_str_digits(), 4,300 digits
    by default): json.loads raises a bare ValueError for it, which this names."""

    def __init__(self, digits: int):
        self.digits = digits
        super().__init__(f"a number {digits:,} digits long is too long to read "
                         f"(at most {sys.get_int_max_str_digits():,} digits)")


class LongNumber:
    """Stands in for a JSON integer too long to read (json_value with `markers`), so
    that the rest of a document is still read and the item holding it named."""

    __slots__ = ("digits",)

    def __init__(self, text: str):
        self.digits = len(text.lstrip("-"))

    def problem(self) -> str:
        return str(NumberTooLong(self.digits))


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise NumberTooLong(len(text.lstrip("-"))) from None


def json_value(text: str, markers: list | None = None):
    """json.loads(text), with an integer too long to read raised as NumberTooLong
    or, given a `markers` list, read as a LongNumber that is also appended to it
    (see long_number). A JSONDecodeError or RecursionError is raised as json.loads
    raises it."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise
    except ValueError:  # only an integer past the digit limit: read it again to say which
        if markers is None:
            return json.loads(text, parse_int=_int)

        def marked(digits: str):
            try:
                return int(digits)
            except ValueError:
                markers.append(LongNumber(digits))
                return markers[-1]

        return json.loads(text, parse_int=marked)


def long_number(value) -> LongNumber | None:
    """The first LongNumber anywhere in `value` (a parsed JSON value), or None."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, LongNumber):
            return item
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


def json_lines(text: str):
    """(line number, parsed object or None, problem or None) per non-blank line."""
    # split on "\n" only: str.splitlines() also breaks on U+2028, \x85, \x1c…,
    # which JSON strings may hold raw, and would shift the line numbers
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        try:
            obj = json_value(line)
        except json.JSONDecodeError as exc:
            yield number, None, f"not valid JSON ({exc.msg})"
        except RecursionError:
            yield number, None, "JSON nested too deeply"
        except NumberTooLong as exc:
            yield number, None, str(exc)
        else:
            yield number, obj, None


def parse_jsonl(text: str, source: str = "") -> LoadResult:
    result = LoadResult(rows=[], source=source)
    for number, obj, problem in json_lines(text):
        reason = problem or validate_row(obj)
        if reason:
            result.problems.append(f"line {number}: {reason}")
        else:
            result.rows.append(obj)
    return result


def size_text(n: int) -> str:
    if n >= 2**30:
        return f"{n / 2**30:.1f} GB"
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 2**10:.1f} KB" if n >= 2**10 else f"{n} bytes"


def check_size(path: Path, max_bytes: int = MAX_FILE_BYTES) -> None:
    size = Path(path).stat().st_size
    if size > max_bytes:
        raise ValueError(f"{Path(path).name}: {size_text(size)} is over the {size_text(max_bytes)} limit; "
                         "split it or cut it down first")
    if size == 0:
        raise ValueError(f"{Path(path).name}: the file is empty")


@dataclass
class Text:
    text: str
    notes: list[str] = field(default_factory=list)  # e.g. a byte-order mark removed


def read_text(path: Path, max_bytes: int = MAX_FILE_BYTES) -> Text:
    """A text file's content, or a ValueError naming the file and what is wrong."""
    path = Path(path)
    check_size(path, max_bytes)
    raw = path.read_bytes()
    for bom, encoding in ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"),
                          (b"\xff\xfe", "UTF-16"), (b"\xfe\xff", "UTF-16")):
        if raw.startswith(bom):
            raise ValueError(f"{path.name}: the file is {encoding} (byte-order mark {bom.hex(' ').upper()}), "
                             "not UTF-8; save it as UTF-8 and upload it again")
    if b"\x00" in raw[:65536]:
        # UTF-8 text never holds a NUL byte; a Parquet, zip, image… file (or UTF-16
        # without a byte-order mark) does
        at = raw.index(b"\x00")
        line = raw[:at].count(b"\n") + 1
        raise ValueError(f"{path.name}: a binary file, not text (a NUL byte at offset {at}, line {line}); "
                         "upload JSONL, JSON or CSV saved as UTF-8 "
                         "(or a Parquet file named .parquet)")
    notes = []
    if raw.startswith(b"\xef\xbb\xbf"):
        # a UTF-8 byte-order mark (Excel writes one) would otherwise break line 1
        raw = raw[3:]
        notes.append("a UTF-8 byte-order mark at the start of the file was ignored")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ValueError(f"{path.name}: not UTF-8 text (byte 0x{raw[exc.start]:02X} at offset {exc.start}, "
                         f"line {line}); save it as UTF-8 and upload it again") from None
    if not text.strip():
        raise ValueError(f"{path.name}: the file is empty")
    return Text(text, notes)


def load_jsonl(path: Path) -> LoadResult:
    path = Path(path)
    result = parse_jsonl(read_text(path).text, source=path.name)
    if not result.rows and not result.problems:
        raise ValueError(f"{path.name}: the file is empty")
    return result


def to_jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def slug(name: str) -> str:
    """A safe file/run name from any text: letters, digits, _ and - only."""
    return plain_name(Path(name).stem, 60, dots=False, trim="-") or "dataset"


_DATA_SUFFIX = re.compile(r"\.(jsonl|ndjson|json|csv|tsv|parquet)$", re.IGNORECASE)


def dataset_name(name: str) -> str:
    """The file stem a dataset is saved under ("my set.jsonl" → "my-set"), or a
    ValueError for a name that is a path or empty (tuner.paths.safe_name)."""
    return safe_name(_DATA_SUFFIX.sub("", str(name or "").strip()), "dataset name")


def saved_path(folder: Path, name: str) -> Path:
    """The file of the saved dataset version `name` ("faq-v2") in `folder`; a
    ValueError for a name that is a path, or a file that is a symlink out of it."""
    return inside(folder, f"{dataset_name(name)}.jsonl")


class DatasetTooBig(ValueError):
    """A dataset that would be a file over the size limit: refused before anything is written."""


def save_dataset(rows: list[dict], name: str, folder: Path, max_bytes: int | None = None) -> Path:
    """Save rows as a new file; never overwrites (a clash gets a version suffix),
    not even when two saves of one name run at once (tuner.paths.write_new).
    A full or failing disk raises StorageError and leaves no file behind; rows
    that would make a file over `max_bytes` (default MAX_FILE_BYTES, the limit a
    dataset file is read back under) raise DatasetTooBig and write nothing.
    """
    base = dataset_name(name)  # refuses "../x", "/etc/x", "a\\b", NUL…: never a path out of `folder`
    text = to_jsonl(rows)
    limit = MAX_FILE_BYTES if max_bytes is None else max_bytes
    size = len(text.encode("utf-8"))
    if size > limit:
        raise DatasetTooBig(f'the dataset "{base}": {size_text(size)} is over the {size_text(limit)} limit for a dataset '
                            "file; cut it down or split it into smaller datasets.")
    names = (f"{base}.jsonl" if version == 1 else f"{base}-v{version}.jsonl" for version in itertools.count(1))
    return write_new(Path(folder), text, names, f'the dataset "{base}"')


_VERSIONED = re.compile(r"^(?P<name>.+?)-v(?P<n>[0-9]+)$")


def version_of(stem: str) -> tuple[str, int]:
    """("faq", 3) for "faq-v3"; ("faq", 1) for "faq" (save_dataset's naming)."""
    match = _VERSIONED.match(stem)
    return (match["name"], int(match["n"])) if match else (stem, 1)


def available(user_folder: Path) -> dict[str, Path]:
    """Label → path for the starter datasets and the user's saved ones, each
    dataset's versions in order (v2 before v10)."""
    found = {}
    for path in sorted(STARTER_DATASETS.glob("*.jsonl")):
        if "." in path.stem:  # NAME.eval.jsonl: a starter set's extra held-out prompts, not a dataset
            continue
        found[f"starter: {path.stem}"] = path
    for path in sorted(_own_files(user_folder), key=lambda p: (version_of(p.stem), p.stem)):
        found[f"saved: {path.stem}"] = path
    return found


def _own_files(folder: Path) -> list[Path]:
    """The dataset files of `folder`, less any that are symlinks to somewhere else
    (one planted in the data root must not make the app read /etc/passwd)."""
    own = []
    for path in Path(folder).glob("*.jsonl"):
        try:
            inside(folder, path.name)
        except ValueError:
            continue
        own.append(path)
    return own


def label_of(path: Path) -> str:
    """The label `available` lists a dataset file under."""
    path = Path(path)
    return f"{'starter' if path.parent.resolve() == STARTER_DATASETS.resolve() else 'saved'}: {path.stem}"


def note_path(path: Path) -> Path:
    return Path(path).with_suffix(".note.json")


def save_version(rows: list[dict], name: str, folder: Path, note: str = "") -> Path:
    """A new version of the dataset `name`: "faq" or "faq-v2" both save the
    next free "faq-vN", beside the earlier versions, which stay as they are.
    `note` (how this version was made) is kept in a small side file."""
    path = save_dataset(rows, version_of(dataset_name(name))[0], folder)  # DatasetTooBig: nothing written
    try:
        atomic_write_json(note_path(path), {"note": note, "rows": len(rows),
                                            "saved": time.strftime("%Y-%m-%d %H:%M:%S")},
                          f'the note of dataset "{path.stem}"')
    except BaseException:
        path.unlink(missing_ok=True)  # a version is its rows and its note, or nothing
        raise
    return path


def note_of(path: Path) -> str:
    try:
        return json.loads(note_path(path).read_text(encoding="utf-8")).get("note", "")
    except (OSError, ValueError, AttributeError, RecursionError):
        return ""


def versions(path: Path) -> list[Path]:
    """Every saved version of the dataset `path` is a version of, oldest first."""
    path = Path(path)
    name = version_of(path.stem)[0]
    same = [p for p in _own_files(path.parent) if version_of(p.stem)[0] == name]
    return sorted(same, key=lambda p: version_of(p.stem)[1])


# --- the seeded split ------------------------------------------------------------------
NONE = "(none)"  # how a row without a value for a column is counted


def value_of(row: dict, column: str) -> str:
    """A row's value in a metadata column, as a split stratifies and a filter counts it."""
    value = row.get(column)
    return NONE if value is None or value == "" else str(value)


@dataclass(frozen=True)
class SplitSpec:
    """Percentages of the rows for train/validation/test; `stratify` keeps a
    metadata column's proportions the same in each part."""

    train: int = 80
    validation: int = 10
    test: int = 10
    seed: int = 0
    stratify: str | None = None

    def __post_init__(self):
        parts = (self.train, self.validation, self.test)
        if any(p < 0 or p > 100 for p in parts):
            raise ValueError("each percentage must be between 0 and 100 "
                             f"(got {self.train}/{self.validation}/{self.test})")
        if sum(parts) != 100:
            raise ValueError(f"train + validation + test must make 100% (got {sum(parts)}%)")
        if self.train <= 0:
            raise ValueError("the train part must be more than 0%")

    def describe(self) -> str:
        by = f", stratified by {self.stratify}" if self.stratify else ""
        return f"split {self.train}/{self.validation}/{self.test}{by}, seed {self.seed}"


def _allocate(n: int, shares: tuple[int, ...]) -> list[int]:
    """n items in whole numbers as close to the shares as can be (largest remainder)."""
    exact = [n * s / 100 for s in shares]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(shares)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in by_remainder[:n - sum(counts)]:
        counts[i] += 1
    return counts


def assign_splits(rows: list[dict], spec: SplitSpec) -> list[str]:
    """One split name per row. The same rows and spec give the same answer; with
    `stratify`, each value's rows are divided by the percentages on their own.
    Each stratum is shuffled with its own seed, so adding rows of one value
    does not move the rows of another."""
    strata: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        strata.setdefault(value_of(row, spec.stratify) if spec.stratify else "", []).append(i)
    labels = [""] * len(rows)
    for value, indices in strata.items():
        random.Random(f"{spec.seed}|{value}").shuffle(indices)
        counts = _allocate(len(indices), (spec.train, spec.validation, spec.test))
        start = 0
        for name, count in zip(SPLITS, counts):
            for i in indices[start:start + count]:
                labels[i] = name
            start += count
    return labels


def has_stored_split(rows: list[dict]) -> bool:
    return bool(rows) and all(row.get(SPLIT_FIELD) in SPLITS for row in rows)


def splits(rows: list[dict], validation_fraction: float = 0.1, test_fraction: float = 0.2,
           seed: int = 0, stratify: str | None = None) -> dict[str, list[dict]]:
    """A seeded train/validation/test split, in the rows' original order.

    The test rows are the held-out prompts for Compare; the validation rows give
    the validation-loss curve. Each non-zero fraction gets at least one row while
    at least one row is left to train on. With `stratify` (a metadata column),
    each of its values is split by the fractions on its own, as the Dataset
    tab's stratified split does. When every row carries a stored
    `split` field ("train", "validation" or "test"), that split is used as is.
    """
    if has_stored_split(rows):
        # a dataset version saved with its split keeps it: reproducible, and
        # whatever the split was (e.g. stratified), training and Compare agree
        return {name: [r for r in rows if r[SPLIT_FIELD] == name] for name in SPLITS}
    if stratify:
        # each value of the column divided by the fractions on its own (the Dataset tab's split)
        test, validation = round(100 * test_fraction), round(100 * validation_fraction)
        labels = assign_splits(rows, SplitSpec(100 - test - validation, validation, test, seed, stratify))
        return {name: [r for r, label in zip(rows, labels) if label == name] for name in SPLITS}
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
        parts = conversation_parts(row)
        meta = {k: v for k, v in row.items() if k != "messages"}
        table.append([parts["user"], parts["assistant"], str(parts["turns"]),
                      json.dumps(meta, ensure_ascii=False) if meta else ""])
    return table


def conversation_parts(row: dict) -> dict:
    """The flat view of a row that a table or CSV shows: system, last user
    turn, last reply, turns, and the whole conversation as JSON."""
    msgs = row["messages"]
    return {
        "system": msgs[0]["content"] if msgs[0]["role"] == "system" else "",
        "user": last_user_text(row),
        "assistant": msgs[-1]["content"],
        "turns": len([m for m in msgs if m["role"] != "system"]),
        "messages": json.dumps(msgs, ensure_ascii=False),
    }


CSV_VIEW = ("system", "user", "assistant", "messages")  # the columns a CSV export derives from messages


def to_csv(rows: list[dict]) -> str:
    """One CSV row per example: the conversation's flat view, then its metadata.
    The `messages` column holds the whole conversation, so the CSV imports back."""
    meta = list(dict.fromkeys(k for row in rows for k in row if k != "messages"))
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([*CSV_VIEW, *meta])
    for row in rows:
        parts = conversation_parts(row)
        writer.writerow([parts[c] for c in CSV_VIEW]
                        + [_cell(row.get(k)) for k in meta])
    return out.getvalue()


def _cell(value) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def export_text(rows: list[dict], fmt: str = "jsonl", part: str = "all") -> str:
    """A dataset version, or one split of it ("train", "validation", "test"), as JSONL or CSV."""
    if part != "all":
        if part not in SPLITS:
            raise ValueError(f"unknown part {part!r}; expected all, {', '.join(SPLITS)}")
        if not has_stored_split(rows):
            raise ValueError("this version has no stored split: make one in the Split step first")
        rows = [r for r in rows if r[SPLIT_FIELD] == part]
    if fmt == "jsonl":
        return to_jsonl(rows)
    if fmt == "csv":
        return to_csv(rows)
    raise ValueError(f"unknown format {fmt!r}; expected jsonl or csv")
