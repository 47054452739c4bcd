"""Knowing when to stop rating, in a real browser: two raters rate on /rate until the owner's
Results tab says "Decided"; the raters' page then says they may stop; the owner closes
rating with one click and a rater's next action says so, the ratings kept; Reopen undoes it.

The fine-tuned model's replies are easy to tell from the base's, so the scripted raters (who
read the replies as a person would) give it 5 and the base 1. With two models each prompt has
one pair, its first rating puts the prompt into the test, and a run of wins decides at the
11th prompt (tests/test_sequential.py works that out by hand).
"""

from __future__ import annotations

import re

import pytest

from browser import ARTIFACTS, serve
from helpers import mark_users, open_evaluation

VARIANTS = [{"name": "base", "label": "base (tiny)", "kind": "base"},
            {"name": "run-xyz", "label": "lora: run-xyz", "kind": "lora"}]
PROMPTS = 14
GOOD = "Here is a clear, friendly note number {position}, ready to send."
POOR = "I am not sure what note {position} should say."
DECIDES_AT_PROMPT = 11  # a win on every prompt: 1/2 · 1.5^10 ≥ 20 = 1/α first at the 11th


def _reply(prompt, variant, k):
    return (GOOD if variant == "run-xyz" else POOR).format(position=prompt["position"])


@pytest.fixture
@mark_users("server")
def served(tiny_llama, tmp_path, patient_expect):
    from ratings.store import Store
    from tuner.paths import Layout

    home = tmp_path / "home"
    store = Store(Layout(home).ratings_db)
    eval_id = open_evaluation(store, "stop round", tiny_llama, PROMPTS, VARIANTS, reply=_reply)
    demo, url = serve(home, tiny_llama, seed=11)
    yield url, store, eval_id
    demo.close()


def _join(page, url, name):
    page.goto(f"{url}/rate")
    page.locator("#rater-eval input").click()
    page.get_by_role("option", name=re.compile("stop round")).click()
    page.locator("#rater-name input, #rater-name textarea").first.fill(name)
    page.locator("#rater-start").click()


def _rate_by_reading(page) -> str:
    """Score the pair shown as a person who can tell the replies apart: the clear note 5, the
    other 1; submit. Returns the prompt rated (as the page shows it)."""
    prompt = page.locator("#rater-prompt").inner_text()
    for side in ("a", "b"):
        text = page.locator(f"#rater-reply-{side} textarea").input_value()
        assert text, f"reply {side} is blank"
        score = "5" if "clear, friendly note" in text else "1"
        page.locator(f"#rater-score-{side}").get_by_label(score, exact=True).check()
    page.locator("#rater-submit").click()
    return prompt


def _visible(locator, text: str):
    from playwright.sync_api import expect

    expect(locator).to_be_visible()
    expect(locator).to_contain_text(text, use_inner_text=True)


def test_raters_rate_until_results_say_decided_then_the_owner_closes_rating(served, chromium):
    from playwright.sync_api import expect

    from ratings.store import CLOSED
    from tuner.ui.rate import DECIDED_NOTE

    url, store, eval_id = served
    ARTIFACTS.mkdir(exist_ok=True)
    with chromium as browser:  # an uncaught error in any of its pages fails the test
        owner = browser.new_page()
        owner.set_default_timeout(30_000)
        owner.goto(url)
        owner.get_by_role("tab", name="Results").click()
        decision = owner.locator("#results-decision")
        _visible(decision, "lora: run-xyz against base (tiny): not decided yet (0 prompts")
        _visible(decision, "valid however often you look")
        expect(owner.locator("#results-close-rating")).to_be_hidden()

        raters = {}
        for name in ("Ana", "Ben"):
            page = browser.new_page(viewport={"width": 1280, "height": 1300})
            page.set_default_timeout(30_000)
            _join(page, url, name)
            _visible(page.locator("#rater-progress"), f"{name} · pair 1 of {PROMPTS}")
            raters[name] = page

        # Ana and Ben take turns; the owner looks after every rating, as the issue allows
        prompts_in, ratings, done, decider = set(), 0, {"Ana": 0, "Ben": 0}, None
        while decider is None:
            assert ratings < 2 * PROMPTS, "the Results tab never said Decided"
            name = ("Ana", "Ben")[ratings % 2]
            page = raters[name]
            prompts_in.add(_rate_by_reading(page))
            ratings += 1
            done[name] += 1
            _visible(page.locator("#rater-reveal"), f"Saved ({done[name]} of {PROMPTS} done)")
            owner.locator("#results-refresh").click()
            if len(prompts_in) < DECIDES_AT_PROMPT:
                _visible(decision, f"not decided yet ({len(prompts_in)} prompts in the test so far")
                expect(owner.locator("#results-close-rating")).to_be_hidden()
                # not decided: the rater is not told to stop
                expect(page.locator("#rater-reveal")).not_to_contain_text("you may stop here")
                page.locator("#rater-next").click()
                _visible(page.locator("#rater-progress"), f"{name} · pair {done[name] + 1} of {PROMPTS}")
                expect(page.locator("#rater-progress")).not_to_contain_text("you may stop here")
            else:
                decider = name
        assert len(prompts_in) == DECIDES_AT_PROMPT
        _visible(decision, f"Decided after {ratings} ratings: lora: run-xyz better than base (tiny) "
                           "(anytime-valid 95%")
        _visible(decision, "Every fine-tuned model is decided")
        close = owner.locator("#results-close-rating")
        expect(close).to_be_visible()
        owner.screenshot(path=str(ARTIFACTS / "results-decided.png"), full_page=True)

        # the rater whose rating decided it is told at once, and again with the next pair
        page = raters[decider]
        _visible(page.locator("#rater-reveal"), DECIDED_NOTE)
        page.locator("#rater-next").click()
        _visible(page.locator("#rater-progress"), f"{decider} · pair {done[decider] + 1} of {PROMPTS}")
        _visible(page.locator("#rater-progress"), DECIDED_NOTE)
        page.screenshot(path=str(ARTIFACTS / "rater-decided.png"), full_page=True)
        other = raters["Ben" if decider == "Ana" else "Ana"]  # holds a pair served before the decision

        # one click closes rating
        saved = len(store.rating_sequence(eval_id))
        close.click()
        _visible(decision, "Rating is closed")
        _visible(owner.locator("#results-close-note"), "Rating is closed: raters are told so")
        expect(close).to_be_hidden()
        expect(owner.locator("#results-reopen-rating")).to_be_visible()

        # the other rater submits the pair on screen: refused, said in words, nothing lost
        _rate_by_reading(other)
        _visible(other.locator("#rater-reveal"), f"⚠️ {CLOSED}")
        # the decider asks for another pair: the panel says why there is none
        page.locator("#rater-next").click()
        _visible(page.locator("#rater-progress"), f"⚠️ {CLOSED}")
        expect(page.locator("#rater-reply-a textarea")).to_have_value("")
        # a newcomer is told the same on joining
        newcomer = browser.new_page()
        newcomer.set_default_timeout(30_000)
        _join(newcomer, url, "Cem")
        _visible(newcomer.locator("#rater-progress"), f"⚠️ {CLOSED}")
        page.screenshot(path=str(ARTIFACTS / "rater-closed.png"), full_page=True)
        assert len(store.rating_sequence(eval_id)) == saved == ratings
        owner.locator("#results-refresh").click()
        _visible(decision, f"Decided after {ratings} ratings")  # the saved ratings still count

        # Reopen: the raters may go on
        owner.locator("#results-reopen-rating").click()
        _visible(owner.locator("#results-close-note"), "Rating is open again")
        expect(close).to_be_visible()  # still decided
        page.locator("#rater-next").click()
        _visible(page.locator("#rater-progress"), f"{decider} · pair {done[decider] + 1} of {PROMPTS}")
        _visible(page.locator("#rater-progress"), DECIDED_NOTE)
        browser.close()
    assert not store.is_closed(eval_id)


def test_the_routes_answer_closed_rating_with_the_stores_words(served):
    """Called directly, as a script would: join, next and submit once rating is closed."""
    import httpx

    from ratings.store import CLOSED
    from tuner.ui.rate import DECIDED_NOTE

    url, store, eval_id = served
    with httpx.Client(base_url=url, timeout=30) as client:
        joined = client.post("/tuner/rate/join", json={"evaluation": eval_id, "name": "Eve", "code": ""})
        assert joined.status_code == 200 and DECIDED_NOTE not in joined.json()["progress"]
        pair = joined.json()["assignment"]
        store.close_rating(eval_id)
        submit = client.post("/tuner/rate/submit", json={"evaluation": eval_id, "assignment": pair, "a": 5, "b": 1})
        assert submit.status_code == 200 and submit.json()["reveal"] == f"⚠️ {CLOSED}"
        for action in ("next", "join"):
            answer = client.post(f"/tuner/rate/{action}", json={"evaluation": eval_id, "name": "Eve", "code": ""})
            assert answer.status_code == 409 and answer.json() == {"error": CLOSED}
        assert store.rating_sequence(eval_id).empty
        store.reopen_rating(eval_id)
        submit = client.post("/tuner/rate/submit", json={"evaluation": eval_id, "assignment": pair, "a": 5, "b": 1})
        assert submit.json()["reveal"].startswith("Saved (1 of 14 done)") and DECIDED_NOTE not in submit.text
