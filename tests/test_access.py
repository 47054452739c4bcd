"""Owner-only actions, rater identity and rate limits, called directly over HTTP
against the real server, as a stranger's script would (issue 8)."""

from __future__ import annotations

import random
import sqlite3

import pytest

from gradio_http import call, call_as_page, config, default_inputs, is_skip
from test_browser import _free_port

PASSWORD = "correct horse battery staple"
VARIANTS = [{"name": "base", "label": "Base model", "kind": "base"},
            {"name": "run-1", "label": "LoRA run", "kind": "lora"}]


def _snapshot(home):
    """Every file under the data root with its size and mtime, and every table's row count."""
    files = {str(p.relative_to(home)): (p.stat().st_size, p.stat().st_mtime_ns)
             for p in sorted(home.rglob("*")) if p.is_file() and not p.name.startswith("ratings.db")}
    with sqlite3.connect(home / "ratings.db") as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        counts = {t: conn.execute(f"SELECT COUNT(*) FROM [{t}]").fetchone()[0] for t in tables}
    return files, counts


def _seed(home, model):
    from ratings.store import Store
    from tuner.paths import Layout

    store = Store(Layout(home).ratings_db)
    prompts = [{"text": f"Write a short note number {i}.", "task": f"note {i}"} for i in range(1, 4)]
    eval_id = store.create_evaluation("friends' round", str(model), prompts, VARIANTS)
    ids = [v["id"] for v in store.variants(eval_id)]
    for p in store.prompts(eval_id):
        for k, vid in enumerate(ids):
            store.add_reply(p["id"], vid, f"Reply {'xy'[k]} to note {p['position']}.", {"max_new_tokens": 16})
    store.open_for_rating(eval_id)
    return store, eval_id


def _serve(home, model, access):
    from app import build_app

    demo = build_app(home, default_model=str(model), rng=random.Random(3), access=access)
    port = _free_port()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    return demo, f"http://127.0.0.1:{port}"


@pytest.fixture
def locked(tiny_llama, tmp_path):
    from tuner.access import Access

    home = tmp_path / "home"
    (home / "datasets").mkdir(parents=True)
    (home / "datasets" / "mine.jsonl").write_text(
        '{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}\n')
    store, eval_id = _seed(home, tiny_llama)
    access = Access(password=PASSWORD)
    demo, url = _serve(home, tiny_llama, access)
    yield demo, url, home, store, eval_id, access
    demo.close()


def _by_api(cfg: dict, name: str) -> int:
    return next(d["id"] for d in cfg["dependencies"] if d.get("api_name") == name)


def test_every_owner_handler_refuses_a_stranger_and_changes_nothing(locked):
    demo, url, home, store, eval_id, access = locked
    cfg = config(url)
    before = _snapshot(home)
    owner_fns = {i: f for i, f in demo.fns.items() if getattr(f.fn, "_tuner_guarded", False)}
    assert len(owner_fns) > 60  # the whole owner page, not a handful
    refused, skipped = [], []
    for fn_index, block_fn in owner_fns.items():
        # a select handler gets what a click on a table cell sends
        event = {"index": [0, 0], "value": None, "selected": True} if block_fn.collects_event_data else None
        result = call(url, fn_index, default_inputs(cfg, fn_index), event_data=event)
        events = {event for _b, event in block_fn.targets}
        if events & {"click", "submit", "upload"}:
            assert not result["success"] and "Owner only" in (result["error"] or ""), (block_fn.name, result)
            refused.append(block_fn.api_name)
        else:
            assert result["success"] and is_skip(result["data"], cfg, fn_index), (block_fn.name, events, result)
            skipped.append(block_fn.name)
    # the actions the issue names are among the refused ones
    for name in ("on_start", "on_stop", "on_resume", "on_generate", "on_import", "on_save_split", "on_send",
                 "on_export", "on_propose", "rate_join"):
        assert name in refused, name
    assert _snapshot(home) == before  # nothing written, nothing deleted


def test_the_same_handlers_answer_the_signed_in_owner(locked):
    demo, url, home, store, eval_id, access = locked
    cfg = config(url)
    owner = {"tuner_owner": access.token()}
    status = call(url, _by_api(cfg, "owner_status"), [], cookies=owner)
    assert status["success"] and "Signed in as the owner" in status["data"][0]
    stranger = call(url, _by_api(cfg, "owner_status"), [])
    assert "Owner only" in stranger["data"][0]
    refresh = next(i for i, f in demo.fns.items() if f.name == "refresh_all")
    answered = call(url, refresh, [], cookies=owner)
    assert answered["success"] and not is_skip(answered["data"])
    assert any("friends' round" in str(choice) for choice in answered["data"][1]["choices"])
    # a forged cookie is a stranger's
    forged = call(url, refresh, [], cookies={"tuner_owner": "0" * 64})
    assert is_skip(forged["data"])


def test_sign_in_gives_the_cookie_only_for_the_password_and_limits_guesses(locked):
    demo, url, home, store, eval_id, access = locked
    cfg = config(url)
    sign_in = _by_api(cfg, "owner_sign_in")
    right = call(url, sign_in, [PASSWORD])
    assert right["data"][0] == access.token()
    for _ in range(5):
        wrong = call(url, sign_in, ["guess"])
        assert wrong["data"][0] == "" and "not the owner password" in wrong["data"][1]
    blocked = call(url, sign_in, [PASSWORD])
    assert blocked["data"][0] == "" and "Too many wrong passwords" in blocked["data"][1]


def test_raters_page_works_without_owner_rights(locked):
    demo, url, home, store, eval_id, access = locked
    cfg = config(url)
    # the raters' events skip Gradio's queue: the page POSTs each to /gradio_api/run/<name>
    for name in ("rater_join", "rater_submit", "rater_next"):
        assert next(d for d in cfg["dependencies"] if d.get("api_name") == name)["queue"] is False, name
    session = "rater-ann-01"
    joined = call_as_page(cfg, url, _by_api(cfg, "rater_join"), [eval_id, "Ann", "", {}], session_hash=session)
    assert joined["success"], joined
    progress = joined["data"][3]
    assert "pair 1 of 3" in progress
    data = [5, 4, "A", "", None, None, None, None, None, None]
    saved = call_as_page(cfg, url, _by_api(cfg, "rater_submit"), [None, None, None, *data], session_hash=session)
    assert saved["success"] and "Saved (1 of 3 done)" in saved["data"][0]
    assert len(store.ratings_frame(eval_id)) == 2


def test_a_rater_cannot_rate_as_someone_else(locked):
    demo, url, home, store, eval_id, access = locked
    cfg = config(url)
    join, submit = _by_api(cfg, "rater_join"), _by_api(cfg, "rater_submit")
    first = call(url, join, [eval_id, "Ann", "", {}], session_hash="ann-browser")
    key = first["data"][2]["Ann"]  # what Ann's browser keeps
    call(url, submit, [None, None, None, 2, 2, None, "", None, None, None, None, None, None], session_hash="ann-browser")
    # Mallory types Ann's name: refused, without her key
    forged = call(url, join, [eval_id, "Ann", "", {}], session_hash="mallory")
    assert "already rates as 'Ann'" in forged["data"][3]
    wrong_key = call(url, join, [eval_id, "Ann", "", {"Ann": "not-her-key"}], session_hash="mallory")
    assert "already rates as 'Ann'" in wrong_key["data"][3]
    # nor can she send Ann's name and assignment straight to submit: the rater is server-side state
    assignment = store.next_pair(eval_id, "Ann", random.Random(0))["assignment_id"]
    forged_values = [assignment, "Ann", eval_id, 1, 1, None, "", None, None, None, None, None, None]
    direct = call(url, submit, forged_values, session_hash="mallory")
    assert "Press Start rating" in direct["data"][0]
    posted = call_as_page(cfg, url, submit, forged_values, session_hash="mallory")  # the page's own path
    assert "Press Start rating" in posted["data"][0]
    scores = store.ratings_frame(eval_id)
    assert sorted(scores["score"]) == [2, 2] and set(scores["rater"]) == {"Ann"}
    # Ann's own browser (her key) gets back in
    again = call(url, join, [eval_id, "Ann", "", {"Ann": key}], session_hash="ann-again")
    assert "pair 2 of 3" in again["data"][3]


def test_a_script_flooding_ratings_is_slowed_down(locked, tiny_llama):
    demo, url, home, store, eval_id, access = locked
    prompts = [{"text": f"Prompt {i}", "task": ""} for i in range(14)]
    big = store.create_evaluation("big round", str(tiny_llama), prompts, VARIANTS)
    ids = [v["id"] for v in store.variants(big)]
    for p in store.prompts(big):
        for vid in ids:
            store.add_reply(p["id"], vid, f"Reply {vid}", {})
    store.open_for_rating(big)
    cfg = config(url)
    join, submit, next_pair = _by_api(cfg, "rater_join"), _by_api(cfg, "rater_submit"), _by_api(cfg, "rater_next")
    call(url, _by_api(cfg, "rater_refresh"), [], session_hash="bot")  # the page load: current evaluations
    call(url, join, [big, "Bot", "", {}], session_hash="bot")
    answers = []
    for _ in range(14):
        answers.append(call(url, submit, [None, None, None, 3, 3, None, "", None, None, None, None, None, None],
                            session_hash="bot")["data"][0])
        call(url, next_pair, [None, None], session_hash="bot")
    saved = [a for a in answers if a.startswith("Saved")]
    slowed = [a for a in answers if "Too many ratings too fast" in a]
    assert len(saved) == 10 and len(slowed) == 4
    with sqlite3.connect(home / "ratings.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM ratings WHERE rater='Bot'").fetchone()[0] == 20  # 10 pairs × 2


def test_open_mode_says_so_and_lets_everyone_in(tiny_llama, tmp_path):
    from tuner.access import Access

    home = tmp_path / "home"
    store, eval_id = _seed(home, tiny_llama)
    demo, url = _serve(home, tiny_llama, Access())
    try:
        cfg = config(url)
        banner = [c for c in cfg["components"] if c.get("props", {}).get("elem_id") == "open-banner"]
        assert banner and "Open mode" in banner[0]["props"]["value"]
        refresh = next(i for i, f in demo.fns.items() if f.name == "refresh_all")
        answered = call(url, refresh, [])
        assert answered["success"] and not is_skip(answered["data"])
    finally:
        demo.close()


def test_access_from_env_and_the_owner_check():
    from tuner.access import Access

    assert Access.from_env({}).open
    both = Access.from_env({"TUNER_OWNER_PASSWORD": "pw", "TUNER_OWNER": "Alice"})
    assert not both.open
    assert both.is_owner({"tuner_owner": both.token()}, None)
    assert both.is_owner({}, "alice")  # Hugging Face usernames compare case-blind
    assert not both.is_owner({}, "mallory") and not both.is_owner({"tuner_owner": "x"}, None)
    assert Access(password="other").token() != both.token()
