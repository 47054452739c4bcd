"""Importing examples from files and the Hugging Face Hub as chat rows.

Reading (a file → records, each with where it came from) is kept apart from
converting (records → `{"messages": [...], **metadata}` rows), so JSONL, JSON,
CSV, Parquet and Hub datasets all meet the same shape detection, column
mapping and per-row reporting. A file-level problem (empty, not UTF-8, too
big, a mapped column that is missing) raises `ImportProblem` before anything
is saved; a bad row is skipped and named by its line or row number.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from tuner import data as tdata
from tuner import models

MAX_ROWS = 200_000  # a Hub dataset or Parquet file is cut here: the tab is for curated sets
SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "csv",
            ".parquet": "parquet"}


class ImportProblem(ValueError):
    """Nothing could be imported; the message names the source and what to do."""


@dataclass
class Table:
    """Records read from one source, before conversion."""

    records: list[dict]
    numbers: list[int]  # each record's line (text files) or row number, from 1
    unit: str  # "line", "row" or "item": how `numbers` are named in messages
    source: str
    columns: list[str] = field(default_factory=list)  # in first-seen order
    problems: list[tuple[int, str]] = field(default_factory=list)  # (number, "line 7: …") per unreadable record
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Mapping:
    """Which column is which part of a conversation (for columns no shape knows)."""

    user: str
    assistant: str
    system: str | None = None
    metadata: tuple[str, ...] | None = None  # None: every other column

    def named(self) -> list[tuple[str, str]]:
        parts = [(self.user, "user turn"), (self.assistant, "assistant reply")]
        if self.system:
            parts.append((self.system, "system prompt"))
        return parts + [(c, "metadata") for c in self.metadata or ()]


@dataclass
class ImportResult(tdata.LoadResult):
    shape: str = ""
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = f"{len(self.rows)} rows imported from {self.source} ({SHAPE_LABELS.get(self.shape, self.shape)})"
        if self.problems:
            shown = "; ".join(self.problems[:3])
            more = ", …" if len(self.problems) > 3 else ""
            text += f", {len(self.problems)} skipped: {shown}{more}"
        return text


# --- reading -----------------------------------------------------------------------
def read_file(path: Path, max_bytes: int = tdata.MAX_FILE_BYTES) -> Table:
    path = Path(path)
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise ImportProblem(f"{path.name}: files of type '{path.suffix or 'none'}' cannot be imported; "
                            "upload JSONL, JSON, CSV or Parquet")
    if kind == "parquet":
        return _read_parquet(path, max_bytes)
    try:
        text = tdata.read_text(path, max_bytes)
    except ValueError as exc:
        raise ImportProblem(str(exc)) from None
    table = {"jsonl": _read_jsonl, "json": _read_json, "csv": _read_csv}[kind](text.text, path)
    table.notes += text.notes
    if not table.records and not table.problems:
        raise ImportProblem(f"{path.name}: the file has no rows")
    return table


def _read_jsonl(text: str, path: Path) -> Table:
    table = Table([], [], "line", path.name)
    for number, obj, problem in tdata.json_lines(text):
        if problem is None and not isinstance(obj, dict):
            problem = f"expected a JSON object, got {type(obj).__name__}"
        if problem:
            table.problems.append((number, f"line {number}: {problem}"))
        else:
            table.records.append(obj)
            table.numbers.append(number)
    if not table.records and table.problems:
        first = text.lstrip("\ufeff \t\r\n").split("\n", 1)[0].strip()
        if first[:1] not in ("{", "["):
            # not one line is JSON: most likely another format under a .jsonl name
            kind = "CSV" if "," in first or ";" in first or "\t" in first else "text"
            raise ImportProblem(f"{path.name}: line 1 is not JSON (it starts {first[:40]!r}): this looks like "
                                f"{kind}, not JSONL; give the file the extension of its format (.csv for CSV)")
    table.columns = _columns(table.records)
    return table


def _read_json(text: str, path: Path) -> Table:
    markers: list = []  # the numbers too long to read, each a LongNumber in `obj`: named below
    try:
        obj = tdata.json_value(text, markers)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # one object per line under a .json name
            return _read_jsonl(text, path)
        raise ImportProblem(f"{path.name}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except RecursionError:
        raise ImportProblem(f"{path.name}: JSON nested too deeply") from None
    if isinstance(obj, dict):
        # {"data": [...]} and similar wrappers; a single example is a list of one
        lists = [v for v in obj.values() if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)]
        obj = lists[0] if lists and "messages" not in obj and "conversations" not in obj else [obj]
    if isinstance(obj, tdata.LongNumber):
        raise ImportProblem(f"{path.name}: {obj.problem()}")
    if not isinstance(obj, list):
        raise ImportProblem(f"{path.name}: expected a JSON list of objects, got {type(obj).__name__}")
    table = Table([], [], "item", path.name)
    for number, item in enumerate(obj, start=1):
        long = tdata.long_number(item) if markers and isinstance(item, dict) else None
        if long is not None:
            table.problems.append((number, f"item {number}: {long.problem()}"))
        elif isinstance(item, dict):
            table.records.append(item)
            table.numbers.append(number)
        else:
            table.problems.append((number, f"item {number}: expected a JSON object, got {type(item).__name__}"))
    table.columns = _columns(table.records)
    return table


def _read_csv(text: str, path: Path) -> Table:
    lines = text.split("\n", 1)
    if lines[0].lstrip()[:1] in ("{", "["):
        raise ImportProblem(f"{path.name}: line 1 starts with {lines[0].lstrip()[:1]!r}: this looks like JSON, "
                            "not CSV; give the file the extension of its format (.jsonl or .json)")
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    if delimiter not in lines[0]:
        delimiter = next((d for d in (";", "\t", "|") if d in lines[0]), delimiter)
    # a long reply may exceed csv's default 128 KB field limit; the file limit bounds it
    csv.field_size_limit(max(csv.field_size_limit(), tdata.MAX_FILE_BYTES))
    # newline="": split records on line ends only (not on U+2028 and the like), keep quoted ones whole
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    table = Table([], [], "line", path.name)
    header, end = None, 0
    try:
        for fields in reader:
            start, end = end + 1, reader.line_num
            if not any(f.strip() for f in fields):
                continue
            if header is None:
                header = _header(fields)
                continue
            if len(fields) != len(header):
                table.problems.append((start, f"line {start}: {len(fields)} fields, but the header has "
                                              f"{len(header)} (a quote not closed, or a stray delimiter?)"))
                continue
            table.records.append(dict(zip(header, fields)))
            table.numbers.append(start)
    except csv.Error as exc:
        raise ImportProblem(f"{path.name}: not readable as CSV at line {reader.line_num}: {exc}") from None
    table.columns = header or []
    if header and not table.records and not table.problems:
        raise ImportProblem(f"{path.name}: the file has a header ({', '.join(header)}) but no rows")
    return table


def _header(fields: list[str]) -> list[str]:
    names = []
    for i, name in enumerate(fields, start=1):
        name = name.strip() or f"column {i}"
        while name in names:
            name += "_"
        names.append(name)
    return names


def _read_parquet(path: Path, max_bytes: int) -> Table:
    """The first MAX_ROWS rows of a Parquet file, read only when they decode to at
    most `max_bytes` (the limit for a dataset file): a file's size says nothing of
    its decoded size (one long string stored once and used by every row, millions
    of values run-length encoded in a few bytes), so that is checked first from
    the file's metadata, then by reading strings as dictionaries and counting what
    they would decode to, before any row is decoded."""
    import pyarrow.parquet as pq

    try:
        tdata.check_size(path, max_bytes)
    except ValueError as exc:
        raise ImportProblem(str(exc)) from None
    try:
        with pq.ParquetFile(path) as parquet:  # the footer only: no row is read
            plan = _parquet_plan(parquet.metadata, path.name, max_bytes)
        if plan is None:
            raise ImportProblem(f"{path.name}: the file has no rows")
        # strings as dictionaries: what the rows decode to is counted without decoding them …
        decoded = 0
        with pq.ParquetFile(path, read_dictionary=plan.dictionary or None) as parquet:
            for batch in _parquet_batches(parquet, plan, max_bytes):
                decoded += sum(_decoded_bytes(column) for column in batch.columns)
                if decoded > max_bytes and plan.delta:  # those strings are decoded to be counted: stop here
                    raise ImportProblem(f"{path.name}: {plan.rows_said} decode to more than "
                                        f"{tdata.size_text(decoded)}, {plan.over(max_bytes)}")
        if decoded > max_bytes:
            raise ImportProblem(f"{path.name}: {plan.rows_said} decode to {tdata.size_text(decoded)}, "
                                f"{plan.over(max_bytes)}")
        # … and, within the limit, they are read plainly (faster than through dictionaries)
        with pq.ParquetFile(path) as parquet:
            records = [r for batch in _parquet_batches(parquet, plan, max_bytes) for r in batch.to_pylist()]
    except ImportProblem:
        raise
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise ImportProblem(f"{path.name}: not a readable Parquet file ({exc})") from None
    if not records:
        raise ImportProblem(f"{path.name}: the file has no rows")
    table = Table(records, list(range(1, len(records) + 1)), "row", path.name, _columns(records))
    if plan.rows < plan.total:
        table.notes.append(f"only the first {plan.rows:,} of the {plan.total:,} rows of {path.name} were read "
                           "(the import limit)")
    return table


PARQUET_BATCH_ROWS = 4096
VALUE_BYTES = 8  # what each value read costs at least (a pointer), whatever it holds
_FIXED_WIDTH = {"BOOLEAN": 1, "INT32": 4, "INT64": 8, "INT96": 12, "FLOAT": 4, "DOUBLE": 8}


@dataclass
class _ParquetPlan:
    """What of a Parquet file to read, and how, once its metadata says it may fit."""

    total: int  # rows in the file
    rows: int  # rows to read: the first MAX_ROWS
    groups: list[int]  # the row groups that hold them
    name: str
    dictionary: list[str] = field(default_factory=list)  # string columns read as dictionaries (each value once)
    delta: list[str] = field(default_factory=list)  # DELTA_BYTE_ARRAY string columns (not readable as dictionaries)
    batch_rows: int = PARQUET_BATCH_ROWS  # rows decoded at a time

    @property
    def rows_said(self) -> str:
        return f"{self.rows:,} rows" if self.rows == self.total else f"the first {self.rows:,} rows"

    @staticmethod
    def over(max_bytes: int) -> str:
        return f"over the {tdata.size_text(max_bytes)} limit for a dataset file; cut it down or split it first"


def _parquet_plan(meta, name: str, max_bytes: int) -> _ParquetPlan | None:
    """From the metadata alone (nothing decoded): refuse a file whose rows to read
    hold more data uncompressed, or more values, than `max_bytes` allows; else
    what to read. None for a file without rows."""
    total = meta.num_rows
    rows = min(total, MAX_ROWS)
    if rows <= 0:
        return None
    schema = meta.schema
    groups, covered = [], 0
    encoded = values = fixed = 0
    delta: dict[str, int] = {}  # DELTA_BYTE_ARRAY columns → their largest chunk, uncompressed
    for i in range(meta.num_row_groups):
        if covered >= rows:
            break
        group = meta.row_group(i)
        if group.num_rows <= 0:
            continue
        groups.append(i)
        share = min(1.0, (rows - covered) / group.num_rows)  # of the last group, only the rows read
        covered += group.num_rows
        for j in range(group.num_columns):
            chunk, column = group.column(j), schema.column(j)
            encoded += int(chunk.total_uncompressed_size * share)
            values += int(chunk.num_values * share)
            width = column.length if column.physical_type == "FIXED_LEN_BYTE_ARRAY" else \
                _FIXED_WIDTH.get(column.physical_type, 0)
            fixed += int(chunk.num_values * share) * (width or 0)
            if "DELTA_BYTE_ARRAY" in chunk.encodings:
                if column.max_repetition_level > 0:
                    raise ImportProblem(
                        f"{name}: the column {column.path} is a list of DELTA_BYTE_ARRAY-encoded strings, whose "
                        "decoded size cannot be checked before reading them; write the file again with the "
                        "default encodings of pandas or pyarrow (dictionary or plain)")
                delta[column.path] = max(delta.get(column.path, 0), chunk.total_uncompressed_size)
    plan = _ParquetPlan(total, rows, groups, name)
    if encoded > max_bytes:
        raise ImportProblem(f"{name}: {plan.rows_said} hold {tdata.size_text(encoded)} uncompressed, "
                            f"{plan.over(max_bytes)}")
    if values * VALUE_BYTES + fixed > max_bytes:
        raise ImportProblem(f"{name}: {plan.rows_said} hold {values:,} values, which decode to at least "
                            f"{tdata.size_text(values * VALUE_BYTES + fixed)}, {plan.over(max_bytes)}")
    # a DELTA_BYTE_ARRAY value is at most its chunk long: decode few enough rows at a time that
    # a batch of the longest stays within the limit (other strings are read as dictionaries)
    plan.batch_rows = max(1, min(PARQUET_BATCH_ROWS, max_bytes // max(1, sum(delta.values()))))
    plan.delta = list(delta)
    plan.dictionary = [schema.column(j).path for j in range(len(schema))
                       if schema.column(j).physical_type == "BYTE_ARRAY" and schema.column(j).path not in delta]
    return plan


def _parquet_batches(parquet, plan: _ParquetPlan, max_bytes: int):
    """The record batches of the rows `plan` reads, refusing one that holds more
    than `max_bytes` once read (metadata that understates what a page holds)."""
    left = plan.rows
    for group in plan.groups:  # one at a time: a nested column's dictionary may change between them
        for batch in parquet.iter_batches(batch_size=plan.batch_rows, row_groups=[group]):
            if batch.num_rows > left:
                batch = batch.slice(0, left)
            if batch.get_total_buffer_size() > max_bytes:
                raise ImportProblem(f"{plan.name}: {plan.rows_said} decode to more than "
                                    f"{tdata.size_text(batch.get_total_buffer_size())}, {plan.over(max_bytes)}")
            yield batch
            left -= batch.num_rows
            if left <= 0:
                return


def _decoded_bytes(array) -> int:
    """About what `array` takes once decoded into values, worked out without decoding
    it: a dictionary's strings are counted at each use, every value costs VALUE_BYTES."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = array.type
    if pa.types.is_dictionary(kind):
        values = array.dictionary
        if pa.types.is_binary(values.type) or pa.types.is_string(values.type) or \
                pa.types.is_large_binary(values.type) or pa.types.is_large_string(values.type):
            used = pc.sum(pc.take(pc.binary_length(values), array.indices)).as_py() or 0
            return used + len(array) * (VALUE_BYTES + 4)
        return _decoded_bytes(array.dictionary_decode())  # not strings: fixed width, as small as its indices
    if isinstance(array, (pa.ListArray, pa.LargeListArray, pa.FixedSizeListArray)):  # a MapArray too
        return len(array) * VALUE_BYTES + _decoded_bytes(array.flatten())
    if isinstance(array, pa.StructArray):
        return len(array) * VALUE_BYTES + sum(_decoded_bytes(field) for field in array.flatten())
    return array.nbytes + len(array) * VALUE_BYTES


def read_hub(dataset_id: str, split: str = "train", config: str | None = None, reachable=models.hub_reachable,
             load=None) -> Table:
    """Rows of a Hugging Face Hub dataset through the `datasets` library.
    `reachable` and `load` are passed in so that tests need no network."""
    dataset_id = (dataset_id or "").strip()
    if not dataset_id:
        raise ImportProblem("Give a Hugging Face Hub dataset id, such as databricks/databricks-dolly-15k")
    source = f"{dataset_id} ({split})"
    if not reachable():
        raise ImportProblem(
            f"Hub dataset '{dataset_id}': the Hugging Face Hub cannot be reached from this machine. Hub "
            "datasets import where the Hub is reachable (e.g. on a Hugging Face Space); here, download the "
            "file elsewhere and upload it (JSONL, JSON, CSV or Parquet).")
    if load is None:
        from datasets import load_dataset as load
    try:
        ds = load(dataset_id, config or None, split=split or "train")
    except Exception as exc:  # unknown id, private, bad split…: the library's words say which
        raise ImportProblem(f"Hub dataset '{dataset_id}' could not be loaded: {type(exc).__name__}: {exc}") from None
    records = ds.select(range(min(len(ds), MAX_ROWS))).to_list()
    if not records:
        raise ImportProblem(f"Hub dataset '{source}' has no rows")
    return Table(records, list(range(1, len(records) + 1)), "row", source, _columns(records))


def _columns(records: list[dict]) -> list[str]:
    return list(dict.fromkeys(k for r in records for k in r))


# --- shapes ------------------------------------------------------------------------
SHAPE_LABELS = {
    "messages": "messages format", "sharegpt": "ShareGPT format", "alpaca": "Alpaca format",
    "dolly": "Dolly format", "prompt_completion": "prompt/completion format",
    "question_answer": "question/answer format", "mapping": "column mapping",
}
# the columns that identify a shape, in the order shapes are tried
SIGNATURES = [
    ("messages", ("messages",)),
    ("sharegpt", ("conversations",)),
    ("dolly", ("instruction", "response")),
    ("alpaca", ("instruction", "output")),
    ("prompt_completion", ("prompt", "completion")),
    ("question_answer", ("question", "answer")),
]
SYSTEM_COLUMNS = ("system", "system_prompt")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bard": "assistant", "bing": "assistant", "model": "assistant",
                  "system": "system"}
# common column names for each part, most telling first, for prefilling a mapping …
USER_NAMES = ("instruction", "prompt", "question", "query", "text", "input", "message", "customer_message",
              "user", "human", "request", "utterance")
ASSISTANT_NAMES = ("response", "answer", "output", "reply", "completion", "agent_reply", "target",
                   "assistant", "gpt", "chosen")
SYSTEM_NAMES = ("system", "system_prompt", "system_message", "context")
# … and, where no name is one of those, words in a name that suggest its part
USER_HINTS = ("user", "question", "prompt", "instruction", "input", "query", "customer", "request", "message")
ASSISTANT_HINTS = ("assistant", "answer", "response", "reply", "output", "completion", "agent", "support",
                   "target")


def _lookup(columns) -> dict[str, str]:
    """lower-case name → actual column name, so "Question" matches "question"."""
    return {c.lower().strip(): c for c in reversed(list(columns))}


def detect_shape(columns) -> str | None:
    names = _lookup(columns)
    for shape, needed in SIGNATURES:
        if all(n in names for n in needed):
            return shape
    return None


def suggest_mapping(columns) -> Mapping | None:
    """A first guess at a mapping from column names (the user confirms it):
    a common name (text, response, …) first, then a name containing a hint
    (customer_message, agent_reply, …); None when no user or reply column is found."""
    columns = [c for c in columns if isinstance(c, str)]
    assistant = _pick_column(columns, ASSISTANT_NAMES, ASSISTANT_HINTS)
    user = _pick_column(columns, USER_NAMES, USER_HINTS, taken=(assistant,))
    if not user or not assistant:
        return None
    system = _pick_column(columns, SYSTEM_NAMES, (), taken=(user, assistant))
    return Mapping(user, assistant, system)


def _pick_column(columns: list[str], names, hints, taken=()) -> str | None:
    names_of = {c: c.lower().strip().replace(" ", "_").replace("-", "_") for c in columns if c not in taken}
    for name in names:
        found = next((c for c, low in names_of.items() if low == name), None)
        if found:
            return found
    for hint in hints:
        found = next((c for c, low in names_of.items() if hint in low), None)
        if found:
            return found
    return None


def _shape_mapping(shape: str, columns) -> tuple[Mapping | None, list[str]]:
    """For text-column shapes: the user/assistant/system columns and the extra
    user columns (Alpaca's input, Dolly's context) appended to the user turn."""
    names = _lookup(columns)
    system = next((names[s] for s in SYSTEM_COLUMNS if s in names), None)
    pairs = {"dolly": ("instruction", "response", "context"), "alpaca": ("instruction", "output", "input"),
             "prompt_completion": ("prompt", "completion", None), "question_answer": ("question", "answer", None)}
    if shape not in pairs:
        return None, []
    user, assistant, extra = pairs[shape]
    return Mapping(names[user], names[assistant], system), [names[extra]] if extra in names else []


# --- converting --------------------------------------------------------------------
class _Skip(Exception):
    """A row that cannot be converted; the message says why."""


def _show(value) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 40 else text[:37] + "…"


def _text(record: dict, column: str, part: str, required: bool = True) -> str:
    value = record.get(column)
    if isinstance(value, float) and math.isnan(value):
        value = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise _Skip(f'"{column}" ({part}) is empty' if column in record else f'no "{column}" ({part})')
        return ""
    if not isinstance(value, str):
        raise _Skip(f'"{column}" ({part}) is {_show(value)}, a {type(value).__name__}; expected text')
    return value


def _meta_value(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return str(value)  # dates, decimals…: kept, as text


def _content(value, where: str) -> str:
    """A message's content: text, or OpenAI-style parts whose text is joined."""
    if isinstance(value, list) and all(isinstance(p, dict) for p in value):
        texts = [p.get("text") for p in value if p.get("type", "text") == "text"]
        if texts and all(isinstance(t, str) for t in texts):
            return "\n".join(texts)
    if not isinstance(value, str):
        raise _Skip(f"{where} has content {_show(value)}; expected text")
    return value


def _turns(value, column: str, keys: tuple[str, str], roles: dict | None) -> list[dict]:
    """A list of turns (messages or ShareGPT) → messages; a JSON string (as in a CSV) is parsed first."""
    if value is None:
        raise _Skip(f'no "{column}" field')
    if isinstance(value, str):
        try:
            value = tdata.json_value(value)
        except json.JSONDecodeError as exc:
            raise _Skip(f'"{column}" is not valid JSON ({exc.msg})') from None
        except tdata.NumberTooLong as exc:
            raise _Skip(f'"{column}": {exc}') from None
        except RecursionError:
            raise _Skip(f'"{column}" is nested too deeply to read') from None
    if not isinstance(value, list) or not value:
        raise _Skip(f'"{column}" must be a non-empty list of turns, got {_show(value)}')
    messages = []
    for i, turn in enumerate(value, start=1):
        if not isinstance(turn, dict):
            raise _Skip(f'"{column}" turn {i} is {_show(turn)}; expected an object')
        role_key, content_key = keys
        if role_key not in turn and "from" in turn:  # ShareGPT turns under a messages name
            role_key, content_key, roles = "from", "value", SHAREGPT_ROLES
        elif role_key not in turn and "role" in turn:  # messages turns under a ShareGPT name
            role_key, content_key, roles = "role", "content", None
        role = turn.get(role_key)
        if roles is not None:
            if str(role).lower() not in roles:
                raise _Skip(f'"{column}" turn {i} has {role_key} {_show(role)}; expected one of human, gpt, system')
            role = roles[str(role).lower()]
        messages.append({"role": role, "content": _content(turn.get(content_key), f'"{column}" turn {i}')})
    return messages


def _convert(record: dict, shape: str, mapping: Mapping | None, extra: list[str], names: dict) -> list[dict]:
    if shape in ("messages", "sharegpt"):
        column = names["messages" if shape == "messages" else "conversations"]
        keys = ("role", "content") if shape == "messages" else ("from", "value")
        messages = _turns(record.get(column), column, keys, None if shape == "messages" else SHAREGPT_ROLES)
        system_col = next((names[s] for s in SYSTEM_COLUMNS if s in names), None)
        if system_col and messages[0]["role"] != "system":
            system = _text(record, system_col, "system prompt", required=False)
            messages = ([{"role": "system", "content": system}] if system else []) + messages
        return messages
    prompt = record.get(mapping.user)
    if shape == "prompt_completion" and isinstance(prompt, list):
        # TRL's conversational prompt/completion: two lists of messages
        return (_turns(prompt, mapping.user, ("role", "content"), None)
                + _turns(record.get(mapping.assistant), mapping.assistant, ("role", "content"), None))
    user = _text(record, mapping.user, "user turn")
    for column in extra:
        more = _text(record, column, "added to the user turn", required=False)
        user += f"\n\n{more}" if more else ""
    messages = [{"role": "user", "content": user},
                {"role": "assistant", "content": _text(record, mapping.assistant, "assistant reply")}]
    if mapping.system:
        system = _text(record, mapping.system, "system prompt", required=False)
        messages = ([{"role": "system", "content": system}] if system else []) + messages
    return messages


def convert(table: Table, shape: str | None = None, mapping: Mapping | None = None) -> ImportResult:
    """Chat rows from a table: `shape` None detects it; a `mapping` overrides both.
    Every column not used for the conversation is kept as metadata (or those
    the mapping names)."""
    result = ImportResult(rows=[], source=table.source, notes=list(table.notes))
    problems = list(table.problems)
    extra: list[str] = []
    if not table.records:  # every line was unreadable: report them, as a JSONL of messages
        result.shape = "mapping" if mapping else shape or "messages"
        result.problems = [text for _, text in problems]
        return result
    if mapping is not None:
        shape = "mapping"
        names = set(table.columns)
        for column, part in mapping.named():
            if column not in names:
                raise ImportProblem(
                    f'{table.source}: the mapping names column "{column}" for the {part}, but there is no such '
                    f"column; the columns are: {', '.join(table.columns) or 'none'}")
    else:
        shape = shape or detect_shape(table.columns)
        if shape is None:
            raise ImportProblem(
                f"{table.source}: the columns ({', '.join(table.columns) or 'none'}) match no known shape "
                "(messages, ShareGPT, Alpaca, Dolly, prompt/completion, question/answer): choose which column "
                "is the user turn and which the assistant reply")
        if shape not in SHAPE_LABELS or shape == "mapping":
            raise ImportProblem(f"unknown shape {shape!r}; expected one of {', '.join(SHAPE_LABELS)}")
        needed = dict(SIGNATURES)[shape]
        missing = [n for n in needed if n not in _lookup(table.columns)]
        if missing:
            raise ImportProblem(f"{table.source}: the {SHAPE_LABELS[shape]} needs the column(s) "
                                f"{', '.join(missing)}; the columns are: {', '.join(table.columns) or 'none'}")
        mapping, extra = _shape_mapping(shape, table.columns)
    used = _used_columns(shape, mapping, extra, table.columns)
    keep = None if mapping is None or mapping.metadata is None else set(mapping.metadata)
    names = _lookup(table.columns)
    result.shape = shape
    for record, number in zip(table.records, table.numbers):
        try:
            messages = _convert(record, shape, mapping, extra, names)
        except _Skip as exc:
            problems.append((number, f"{table.unit} {number}: {exc}"))
            continue
        row = {"messages": messages}
        for key, value in record.items():
            if key not in used and (keep is None or key in keep) and key != "messages":
                row[key] = _meta_value(value)
        reason = tdata.validate_row(row)
        if reason:
            problems.append((number, f"{table.unit} {number}: {reason}"))
        else:
            result.rows.append(row)
    result.problems = [text for _, text in sorted(problems, key=lambda p: p[0])]
    return result


def _used_columns(shape: str, mapping: Mapping | None, extra: list[str], columns) -> set[str]:
    names = _lookup(columns)
    used = {names[s] for s in SYSTEM_COLUMNS if s in names} if shape != "mapping" else set()
    if shape == "messages":
        # a CSV export's flat view of the conversation is not metadata
        return used | {names["messages"]} | {names[c] for c in tdata.CSV_VIEW if c in names}
    if shape == "sharegpt":
        return used | {names["conversations"]}
    used |= {mapping.user, mapping.assistant, *extra}
    return used | ({mapping.system} if mapping.system else set())


def import_file(path: Path, shape: str | None = None, mapping: Mapping | None = None,
                max_bytes: int = tdata.MAX_FILE_BYTES) -> ImportResult:
    return convert(read_file(path, max_bytes), shape, mapping)


def save_import(result: ImportResult, name: str, folder: Path) -> Path:
    """Save an import's valid rows as a new dataset version (never over an old one)."""
    if not result.rows:
        raise ImportProblem(f"{result.source}: no valid rows, so nothing was saved")
    try:
        tdata.dataset_name(name)
    except ValueError as exc:  # a name that is a path, empty or too long: said, nothing saved
        raise ImportProblem(f"{result.source}: {exc}") from None
    try:
        return tdata.save_version(result.rows, name, folder, note=f"imported: {result.summary()}")
    except tdata.DatasetTooBig as exc:  # too big to save: said, nothing saved (the tab adds that)
        raise ImportProblem(f"{result.source}: {str(exc).rstrip('.')}") from None
