"""Prompt files: the prompts of an evaluation set or of `python -m tuner generate`.

CSV with a `prompt` column (and optional id, task, reference, category), or
JSONL with the same keys (or `messages`, whose last assistant turn, if any,
becomes the reference). A bad row is an error naming its line.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from tuner import data as tdata

SUFFIXES = (".csv", ".jsonl", ".ndjson")


def prompt_item(prompt: str, position: int, task=None, reference=None, category=None, external_id=None,
          messages=None) -> dict:
    prompt = prompt.strip()
    return {"external_id": str(external_id or position), "task": (task or "").strip() or _task_of(prompt),
            "text": prompt, "messages": messages or [{"role": "user", "content": prompt}],
            "reference": (reference or "").strip() or None, "category": (category or "").strip() or None}


def from_row(row: dict, position: int) -> dict:
    """A dataset row (messages ending with the reply) as a prompt item: the
    conversation up to the last user turn, the short `answer` (or a `reference`,
    else the reply) as the reference, and the difficulty, else the category:
    per-difficulty accuracy is what QA sets are judged by. `category_column` names the
    column the category came from, for the tables' headers."""
    difficulty = _str(row.get("difficulty"))
    item = prompt_item(tdata.last_user_text(row), position, task=row.get("task"),
                       category=difficulty or _str(row.get("category")),
                       reference=_str(row.get("answer")) or _str(row.get("reference"))
                       or row["messages"][-1]["content"],
                       external_id=row.get("id"), messages=tdata.prompt_of(row))
    return {**item, "category_column": "difficulty" if difficulty else "category"}


def _str(value) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def _task_of(prompt: str) -> str:
    """A short task name from the prompt's first words."""
    words = prompt.split()
    return " ".join(words[:6]) + ("…" if len(words) > 6 else "")


def read_prompts(path: Path) -> list[dict]:
    """CSV with a `prompt` column (and optional id, task, reference, category),
    or JSONL with the same keys (or `messages` ending with a user turn)."""
    path = Path(path)
    if path.suffix.lower() not in SUFFIXES:
        raise ValueError(f"{path.name}: prompt files of type '{path.suffix or 'none'}' cannot be read; "
                         "use CSV (a 'prompt' column) or JSONL")
    # the upload limit, empty, binary, UTF-16, not UTF-8: each said with the file's name
    text = tdata.read_text(path).text
    items = []
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        columns = [c.strip().lower() for c in reader.fieldnames or []]
        if "prompt" not in columns:
            raise ValueError(f"{path.name}: needs a 'prompt' column (found: {', '.join(columns) or 'none'})")
        for number, row in enumerate(reader, start=2):
            row = {(k or "").strip().lower(): (v or "") for k, v in row.items()}
            if not row.get("prompt", "").strip():
                raise ValueError(f"{path.name}: line {number}: the 'prompt' field is empty")
            items.append(prompt_item(row["prompt"], len(items) + 1, row.get("task"), row.get("reference"),
                               row.get("category"), row.get("id")))
    else:
        for number, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path.name}: line {number}: not valid JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path.name}: line {number}: expected a JSON object")
            messages = obj.get("messages")
            if isinstance(messages, list) and messages:
                if not all(isinstance(m, dict) for m in messages):
                    raise ValueError(f"{path.name}: line {number}: each turn in 'messages' must be an object")
                if messages[-1].get("role") == "assistant":
                    # a dataset row (a run's test.jsonl): its reply, or its short answer, is the reference
                    if not isinstance(messages[-1].get("content"), str):
                        raise ValueError(f"{path.name}: line {number}: the last assistant turn has no text")
                    items.append(from_row(obj, len(items) + 1))
                    continue
                users = [m.get("content") for m in messages if m.get("role") == "user"]
                if not users or not isinstance(users[-1], str):
                    raise ValueError(f"{path.name}: line {number}: 'messages' has no user turn")
                items.append(prompt_item(users[-1], len(items) + 1, obj.get("task"), obj.get("reference"),
                                   obj.get("category"), obj.get("id"), messages=messages))
            elif isinstance(obj.get("prompt"), str) and obj["prompt"].strip():
                items.append(prompt_item(obj["prompt"], len(items) + 1, obj.get("task"), obj.get("reference"),
                                   obj.get("category"), obj.get("id")))
            else:
                raise ValueError(f"{path.name}: line {number}: needs a non-empty 'prompt' (or 'messages')")
    if not items:
        raise ValueError(f"{path.name}: no prompts")
    return items


