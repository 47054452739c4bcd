"""The row editor's engine: a conversation from the editor's fields, checked
before anything is saved, and the add / replace / delete that make a draft.

The editor shows a row as a system prompt, a grid of turns (one user message
and the assistant's reply per line) and its metadata as a JSON object.
"""

from __future__ import annotations

import json
import math

from tuner import data as tdata

TURN_COLUMNS = ["user", "assistant"]


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def editor_fields(row: dict) -> tuple[str, list[list[str]], str]:
    """(system prompt, [[user, reply], …], metadata JSON) for the editor."""
    messages = row["messages"]
    system = messages[0]["content"] if messages[0]["role"] == "system" else ""
    turns: list[list[str]] = []
    for m in messages:
        if m["role"] == "user":
            turns.append([m["content"], ""])
        elif m["role"] == "assistant":
            if turns and not turns[-1][1]:
                turns[-1][1] = m["content"]
            else:
                turns.append(["", m["content"]])
    meta = {k: v for k, v in row.items() if k != "messages"}
    return system, turns, json.dumps(meta, ensure_ascii=False) if meta else ""


def is_blank(system: str, turns, metadata: str = "") -> bool:
    """Whether the editor's fields hold nothing at all (every grid cell empty)."""
    cells = [_cell(c) for t in (turns or []) for c in t]
    return not (system or "").strip() and not (metadata or "").strip() and not any(c.strip() for c in cells)


def build_row(system: str, turns, metadata: str = "") -> tuple[dict | None, list[str]]:
    """A row from the editor's fields, or None and every problem found, each
    naming the turn or field: an empty user message (a missing user turn), an
    empty reply, a last turn without a reply, metadata that is not a JSON object."""
    problems = []
    pairs = [[_cell(c) for c in (list(t) + ["", ""])[:2]] for t in (turns or [])]
    pairs = [p for p in pairs if p[0].strip() or p[1].strip()]  # a blank grid line is no turn
    if not pairs:
        problems.append("add a turn: a user message and the assistant's reply")
    messages = [{"role": "system", "content": system.strip()}] if (system or "").strip() else []
    for k, (user, reply) in enumerate(pairs, start=1):
        if not user.strip():
            problems.append(f"turn {k}: the user message is empty (each reply answers a user turn)")
        if not reply.strip():
            problems.append(f"turn {k}: the assistant reply is empty" + (
                ", so the conversation does not end with an assistant reply" if k == len(pairs) else ""))
        messages += [{"role": "user", "content": user.strip()}, {"role": "assistant", "content": reply.strip()}]
    meta = {}
    if (metadata or "").strip():
        try:
            meta = tdata.json_value(metadata)
        except json.JSONDecodeError as exc:
            problems.append(f"metadata: not valid JSON ({exc.msg} at column {exc.colno}); "
                            'write it as {"category": "fact"}')
        except tdata.NumberTooLong as exc:
            problems.append(f"metadata: {exc}")
        except RecursionError:
            problems.append("metadata: nested too deeply to read")
        else:
            if not isinstance(meta, dict):
                problems.append(f'metadata: expected a JSON object such as {{"category": "fact"}}, '
                                f"got {type(meta).__name__}")
                meta = {}
            elif "messages" in meta:
                problems.append('metadata: "messages" is the conversation itself; use another name')
    if problems:
        return None, problems
    row = {"messages": messages, **meta}
    reason = tdata.validate_row(row)
    return (None, [reason]) if reason else (row, [])


def _fits(rows: list[dict], row: dict) -> dict:
    # in a dataset with a stored split every row needs one, or the split is
    # ignored: a new row trains unless it says otherwise
    if tdata.has_stored_split(rows) and tdata.SPLIT_FIELD not in row:
        return {**row, tdata.SPLIT_FIELD: "train"}
    return row


def add_row(rows: list[dict], row: dict) -> list[dict]:
    return rows + [_fits(rows, row)]


def replace_row(rows: list[dict], index: int, row: dict) -> list[dict]:
    _check_index(rows, index)
    others = rows[:index] + rows[index + 1:]
    return rows[:index] + [_fits(others, row)] + rows[index + 1:]


def delete_row(rows: list[dict], index: int) -> list[dict]:
    _check_index(rows, index)
    return rows[:index] + rows[index + 1:]


def _check_index(rows: list[dict], index: int) -> None:
    if not 0 <= index < len(rows):
        raise ValueError(f"there is no row {index + 1}: the dataset has {len(rows)} rows")
