"""The raters' page (/rate) in a real browser, and its handlers called directly.

Two raters rate the same evaluation: each sees their own queue and progress,
the reveal comes after the commit, keys 1-5 and Enter work, and a rater can
leave and continue later.
"""

from __future__ import annotations

import json
import re

import pytest

from browser import ARTIFACTS, serve
from helpers import mark_users, open_evaluation

VARIANTS = [{"name": "base", "label": "base (tiny)", "kind": "base"},
            {"name": "run-xyz", "label": "lora: run-xyz", "kind": "lora"}]


@pytest.fixture
@mark_users("server")
def served(tiny_llama, tmp_path, patient_expect):
    from ratings.store import Store
    from tuner.paths import Layout

    home = tmp_path / "home"
    store = Store(Layout(home).ratings_db)
    eval_id = open_evaluation(store, "friends' round", tiny_llama, 3, VARIANTS)
    open_evaluation(store, "coded round", tiny_llama, 1, VARIANTS, invite_code="tea")
    demo, url = serve(home, tiny_llama, seed=5)
    yield url, store, eval_id, demo
    demo.close()


def _join(page, url, name, evaluation="friends' round", code=""):
    page.goto(f"{url}/rate")
    page.locator("#rater-eval input").click()
    page.get_by_role("option", name=re.compile(re.escape(evaluation))).click()
    page.locator("#rater-name input, #rater-name textarea").first.fill(name)
    if code:
        page.locator("#rater-code input, #rater-code textarea").first.fill(code)
    page.locator("#rater-start").click()


def test_two_raters_each_get_their_own_queue(served, chromium):
    from playwright.sync_api import expect

    url, store, eval_id, demo = served
    ARTIFACTS.mkdir(exist_ok=True)
    with chromium as browser:  # the shared one: an uncaught page error fails the test
        ana = browser.new_context(viewport={"width": 1280, "height": 1300}).new_page()
        ben = browser.new_context(viewport={"width": 1280, "height": 1300}).new_page()
        for page in (ana, ben):
            page.set_default_timeout(30_000)

        _join(ana, url, "Ana")
        expect(ana.locator("#rater-progress")).to_contain_text("Ana · pair 1 of 3")
        # the rating page has no owner controls
        assert ana.get_by_text("Start training").count() == 0 and ana.get_by_text("Generate replies").count() == 0
        expect(ana.locator("#rater-reveal")).to_have_text("")
        ana.locator("#rater-score-a").get_by_label("4").check()
        ana.locator("#rater-score-b").get_by_label("2").check()
        ana.locator("#rater-preference").get_by_label("A").check()
        ana.locator("#rater-submit").click()
        # saved, but which model wrote which waits for her last pair (the default)
        expect(ana.locator("#rater-reveal")).to_contain_text("1 of 3 done")
        expect(ana.locator("#rater-reveal")).to_contain_text("shown after your last pair")
        assert "lora" not in ana.locator("#rater-reveal").inner_text()
        # pressing Submit again replaces nothing and says why
        ana.locator("#rater-submit").click()
        expect(ana.locator("#rater-reveal")).to_contain_text("already rated this pair")
        ana.screenshot(path=str(ARTIFACTS / "rater.png"), full_page=True)

        # keys: 5 then 3 fill A then B, Enter submits
        ana.locator("#rater-next").click()
        expect(ana.locator("#rater-progress")).to_contain_text("pair 2 of 3")
        ana.locator("body").click(position={"x": 5, "y": 5})
        for key in ("5", "3", "Enter"):
            ana.keyboard.press(key)
        expect(ana.locator("#rater-reveal")).to_contain_text("2 of 3 done")

        # Ben starts from his own first pair
        _join(ben, url, "Ben")
        expect(ben.locator("#rater-progress")).to_contain_text("Ben · pair 1 of 3")

        # Ana leaves and comes back later: she continues where she stopped
        _join(ana, url, "Ana")
        expect(ana.locator("#rater-progress")).to_contain_text("Ana · pair 3 of 3")
        # her last pair: now every pair she rated is revealed
        ana.locator("#rater-score-a").get_by_label("1").check()
        ana.locator("#rater-score-b").get_by_label("5").check()
        ana.locator("#rater-submit").click()
        expect(ana.locator("#rater-reveal")).to_contain_text("that was your last pair")
        expect(ana.locator("#rater-reveal")).to_contain_text("lora: run-xyz")
        expect(ana.locator("#rater-reveal")).to_contain_text("pair 3")

        # a wrong invite code is refused
        _join(ben, url, "Ben", evaluation="coded round", code="coffee")
        expect(ben.locator("#rater-progress")).to_contain_text("invite code")
        browser.close()

    frame = store.ratings_frame(eval_id)
    assert sorted(frame[frame["rater"] == "Ana"]["score"]) == [1, 2, 3, 4, 5, 5]
    assert frame[frame["rater"] == "Ben"].empty
    # the raters' page is an app of its own with no Python handler: its buttons call the plain routes
    assert demo.raters.fns and all(f.fn is None for f in demo.raters.fns.values())


def test_raters_routes_send_no_variant_name_before_the_commit(served):
    """Called directly, as a script would: what the server returns before the commit."""
    import httpx

    url, store, eval_id, _demo = served
    with httpx.Client(base_url=url, timeout=30) as client:
        served_pair = client.post("/tuner/rate/join", json={"evaluation": eval_id, "name": "Eve", "code": ""})
        assert served_pair.status_code == 200, served_pair.text
        assert "tuner_rater" in client.cookies  # the browser's key to the name, HttpOnly
        assert "HttpOnly" in served_pair.headers["set-cookie"]
        text = served_pair.text
        assert "Eve · pair 1 of 3" in served_pair.json()["progress"]
        for secret in ("base (tiny)", "lora", "run-xyz"):
            assert secret not in text
        pair = served_pair.json()["assignment"]

        def submit(**fields):
            return client.post("/tuner/rate/submit", json={"evaluation": eval_id, "assignment": pair, **fields})

        # a score outside 1-5 is refused on the server, whatever a script sends
        assert "the score must be a whole number from 1 to 5 (got 7)" in submit(a=7, b=3).json()["reveal"]
        for odd in ({"x": 1}, [3], "3; DROP TABLE ratings", 3.5, True):  # whatever a script sends
            assert "⚠️" in submit(a=odd, b=3).json()["reveal"]
        assert "must be text" in submit(a=4, b=3, comment={"not": "text"}).json()["reveal"]
        assert "Reply A: choose a score" in submit(a=None, b=3).json()["reveal"]
        assert store.ratings_frame(eval_id).empty
        reveal = submit(a=4, b=3, preference="tie")
        assert "lora" not in reveal.text and "shown after your last pair" in reveal.json()["reveal"]
        assert len(store.ratings_frame(eval_id)) == 2
    # another browser (no cookie) cannot rate as Eve, nor submit her pair
    with httpx.Client(base_url=url, timeout=30) as stranger:
        refused = stranger.post("/tuner/rate/submit", json={"evaluation": eval_id, "assignment": pair, "a": 1, "b": 1})
        assert refused.status_code == 400 and "Start rating" in refused.json()["error"]
        taken = stranger.post("/tuner/rate/join", json={"evaluation": eval_id, "name": "Eve", "code": ""})
        assert taken.status_code == 409 and "another browser" in taken.json()["error"]
    assert len(store.ratings_frame(eval_id)) == 2
