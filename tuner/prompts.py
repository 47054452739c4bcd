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
                if messages[-1].get("role") == "assistant":
                    obj.setdefault("reference", messages[-1].get("content"))
                    messages = messages[:-1]
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


