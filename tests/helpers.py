"""What several test files share that is not a fixture: rows and files, one way to seed an
evaluation open for rating, a rated evaluation for the results tables, the app served with
the owner signed in and its events called over HTTP, a count of what enters a queue, and
`mark_users`, which marks every test that uses a fixture (conftest.py applies it).

Test files import these (`from helpers import …`), never one another; the fixtures live
in conftest.py, the browser tests' app, page and pickers in browser.py, Gradio's queue
protocol in gradio_http.py. Importing this module is cheap (no gradio, no torch), so the
benchmarks in bench/ use it too.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tuner.paths import STARTER_DATASETS

POLITE = STARTER_DATASETS / "polite_assistant.jsonl"


# --- marks ---------------------------------------------------------------------------------------
def mark_users(*marks: str):
    """Decorate a fixture function (under @pytest.fixture) so that every test using it, directly
    or through another fixture, gets these marks, e.g. @mark_users("server") on a fixture that
    starts the app's server; conftest.py's pytest_collection_modifyitems applies them."""
    def decorate(function):
        function.marks_users = tuple(getattr(function, "marks_users", ())) + marks
        return function
    return decorate


# --- rows and files ------------------------------------------------------------------------------
def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows),
                    encoding="utf-8")
    return path


def chat(user: str, assistant: str, **meta) -> dict:
    return {"messages": [{"role": "user", "content": user},
                         {"role": "assistant", "content": assistant}], **meta}


# --- an evaluation open for rating ---------------------------------------------------------------
VARIANTS = [{"name": "base", "label": "Base model", "kind": "base"},
            {"name": "run-1", "label": "LoRA run", "kind": "lora"}]


def open_evaluation(store, name: str = "friends' round", model="tiny", prompts=3, variants=VARIANTS, *,
                    reply: str | Callable = "Reply {letter} to note {position}.",
                    reply_settings: dict | None = None, latency_s=None, new_tokens=None,
                    settings: dict | None = None, reveal: str = "end", invite_code: str | None = None) -> int:
    """A new evaluation in `store` (a ratings.store.Store), every variant's reply to every prompt
    written, opened for rating; its id.

    prompts: a count n (the prompts "Write a short note number i." with the task "note i",
    i = 1..n), a list of texts, or a list of prompt dicts as Store.create_evaluation takes them.
    reply: the reply of the k-th variant (0, 1, …) to a prompt, as a format string over
    {letter} ("x", "y", "z", … by k), {k}, {position} (the prompt's, from 1), {text} (the
    prompt's) and {variant} (its name), or as a callable (prompt row, variant name, k) -> text.
    reply_settings: each reply's generation settings ({"max_new_tokens": 16} unless given);
    latency_s, new_tokens: each reply's, a number or a callable of k (None: not recorded).
    settings, reveal, invite_code: the evaluation's, as Store.create_evaluation takes them."""
    if isinstance(prompts, int):
        prompts = [{"text": f"Write a short note number {i}.", "task": f"note {i}"} for i in range(1, prompts + 1)]
    prompts = [{"text": p} if isinstance(p, str) else p for p in prompts]
    eval_id = store.create_evaluation(name, str(model), prompts, variants, settings=settings,
                                      invite_code=invite_code, reveal=reveal)
    names = {v["id"]: v["name"] for v in store.variants(eval_id)}
    reply_settings = {"max_new_tokens": 16} if reply_settings is None else reply_settings
    for p in store.prompts(eval_id):
        for k, (vid, variant) in enumerate(names.items()):
            text = (reply(p, variant, k) if callable(reply) else
                    reply.format(letter="xyzuvw"[k], k=k, position=p["position"], text=p["text"], variant=variant))
            store.add_reply(p["id"], vid, text, reply_settings, _per_variant(latency_s, k), _per_variant(new_tokens, k))
    store.open_for_rating(eval_id)
    return eval_id


def _per_variant(value, k: int):
    return value(k) if callable(value) else value


# --- a rated evaluation for the results tables, the reports and the Results tab --------------------
ROUND_VARIANTS = [{"name": "base", "label": "base (tiny)", "kind": "base"},
                  {"name": "run-xyz", "label": "lora: run-xyz", "kind": "lora"}]
ROUND_PROMPTS = [
    {"text": "When was Brightwave founded?", "external_id": "q1", "task": "founding", "category": "easy",
     "reference": "It was founded in 2014."},
    {"text": "Where is Brightwave based?", "external_id": "q2", "task": "place", "category": "easy",
     "reference": "Tampere, Finland."},
    {"text": "Who runs Brightwave?", "external_id": "q3", "task": "people", "category": "hard",
     "reference": "The CEO is Liisa Kortelainen."},
    {"text": "Decline an invitation politely.", "external_id": "q4", "task": "etiquette"},
]
ROUND_REPLIES = {  # (base, fine-tuned) per prompt
    1: ("I think it was 1999.", "It was founded in 2014."),
    2: ("Somewhere in Europe.", "Brightwave is based in Tampere, Finland."),
    3: ("I do not know.", "The CEO is Liisa Kortelainen.\nShe | founded it"),
    4: ("No.", "Thank you so much for the invitation; sadly I cannot come."),
}
# (rater, position) -> (base score, fine-tuned score, preference for the fine-tuned side or None, comment)
ROUND_SCORES = {("Ana", 1): (2, 4, "ft", "base guessed"), ("Ana", 2): (3, 5, "ft", None),
                ("Ana", 3): (3, 3, "tie", None), ("Ana", 4): (4, 5, None, None),
                ("Ben", 1): (3, 5, "ft", None), ("Ben", 2): (3, 4, "ft", None),
                ("Ben", 3): (2, 4, "base", "odd\nline"), ("Ben", 4): (4, 5, "ft", None)}


def filled_store(path: Path, rated: bool = True) -> tuple:
    """An evaluation of 4 prompts × 2 variants ("friends' round" of the model "tiny"), rated by
    Ana and Ben through the store's own rating flow (sides drawn by the store, scores given per
    variant as ROUND_SCORES says); (the ratings.store.Store at `path`, the evaluation's id)."""
    from ratings.store import Store

    store = Store(path)
    settings = {"max_new_tokens": 16, "temperature": 0.0, "variants": ["base", "run-xyz"]}
    eval_id = open_evaluation(store, "friends' round", "tiny", ROUND_PROMPTS, ROUND_VARIANTS, settings=settings,
                              reply=lambda p, variant, k: ROUND_REPLIES[p["position"]][k],
                              latency_s=lambda k: 0.5 + k, new_tokens=lambda k: 8 + k)
    if rated:
        rng = random.Random(7)
        for rater in ("Ana", "Ben"):
            while (pair := store.next_pair(eval_id, rater, rng)) is not None:
                rate_as_planned(store, pair["assignment_id"], rater)
    return store, eval_id


def rate_as_planned(store, assignment_id: int, rater: str) -> None:
    """Rate one assignment of filled_store's evaluation as ROUND_SCORES says."""
    with store.db() as db:
        position, left = db.execute(
            "SELECT p.position, v.name FROM assignments a JOIN replies r ON r.id = a.left_reply_id "
            "JOIN prompts p ON p.id = r.prompt_id JOIN variants v ON v.id = r.variant_id WHERE a.id = ?",
            [assignment_id]).fetchone()
    base, tuned, preferred, comment = ROUND_SCORES[(rater, position)]
    left_is_base = left == "base"
    pref = {None: None, "tie": "tie", "ft": "B" if left_is_base else "A", "base": "A" if left_is_base else "B"}
    store.rate_pair(assignment_id, rater, base if left_is_base else tuned, tuned if left_is_base else base,
                    preference=pref[preferred], comment=comment)


# --- the app served, the owner signed in, its events called over HTTP -----------------------------
@dataclass
class Served:
    """The running app: its base url, the owner's signed-in client (the cookies and the
    page's anti-forgery header, as the studio's page sends them) and a stranger's."""
    tuner: object
    url: str
    owner: object  # httpx.Client
    stranger: object  # httpx.Client
    cookies: dict

    def close(self) -> None:
        self.owner.close()
        self.stranger.close()
        self.tuner.close()


def serve_signed_in(home: Path, password: str | None, model: str = "smollm2-135m-instruct") -> Served:
    """The real app over `home` on a free port (browser.serve: uvicorn, as app.py serves it; the
    upload limit is app.py's: TUNER_MAX_UPLOAD, else 50mb), with `password` as the owner's,
    signed in; `password` None: open mode, where everyone is the owner (the "stranger" too).
    Close it."""
    import httpx

    from browser import serve
    from gradio_http import owner_client, sign_in
    from tuner.access import Access

    tuner, url = serve(home, model, access=Access(password=password), seed=0)
    cookies = sign_in(url, password) if password else {}
    return Served(tuner, url, owner_client(url, cookies, timeout=120), httpx.Client(base_url=url, timeout=120),
                  cookies)


def endpoint(client, *labels: str) -> str:
    """The API name of the event whose inputs carry these labels (names like
    /on_export_1 depend on the order events were wired); `client`: an httpx.Client."""
    answer = client.get("/gradio_api/info", timeout=30)
    assert answer.status_code == 200, answer.text
    info = answer.json()["named_endpoints"]
    found = [name for name, spec in info.items() if [p.get("label") for p in spec["parameters"]] == list(labels)]
    assert found, f"no endpoint with inputs {labels}"
    return found[0]


def call_api(client, api: str, data: list) -> tuple[str, object]:
    """Call an event over the HTTP API, as any script could: (last event, its data)."""
    api = api.lstrip("/")
    started = client.post(f"/gradio_api/call/{api}", json={"data": data}, timeout=30)
    started.raise_for_status()
    stream = client.get(f"/gradio_api/call/{api}/{started.json()['event_id']}", timeout=300).text
    event, payload = None, None
    for line in stream.splitlines():
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            payload = json.loads(line[5:].strip())
    return event, payload


def upload(client, name: str, content: bytes):
    """POST one file to Gradio's upload route; the httpx.Response."""
    return client.post("/gradio_api/upload", files={"files": (name, content)}, timeout=120)


# --- what enters a queue -------------------------------------------------------------------------
def count_pushes(blocks, monkeypatch) -> list:
    """Every event that enters `blocks`' queue from now on: (fn_index, whether the gate found
    the owner), in a list that grows as they come."""
    seen = []
    original = blocks._queue.push

    async def push(body, request, username):
        seen.append((body.fn_index, bool(request.scope.get("tuner.owner"))))
        return await original(body=body, request=request, username=username)

    monkeypatch.setattr(blocks._queue, "push", push)
    return seen


def database_before(path, migration: str):
    """A sqlite_utils database at `path` with every migration of ratings.db applied up to, not
    including, the one named `migration`: a file as an older Tuner left it."""
    import sqlite_utils
    from sqlite_utils.migrations import Migrations

    from ratings.db import migrations

    names = [m.name for m in migrations._migrations]
    older = Migrations(migrations.name)
    for m in migrations._migrations[:names.index(migration)]:
        older(name=m.name)(m.fn)
    db = sqlite_utils.Database(path)
    older.apply(db)
    return db
