"""From a rated evaluation to a better model and back, in a real browser: correct a low-rated
reply (Results), train DPO on the ratings from the SFT run (Train: the counts before Start,
the rewards chart), compare base, SFT and DPO in one evaluation on new prompts (Compare),
rate, and read the leaderboard, on the tiny random Llama."""

from __future__ import annotations

import re
import shutil

import pytest

from browser import ARTIFACTS, assert_chart_drawn, pick, serve
from helpers import mark_users, open_evaluation

PROMPTS = [f"Greet guest number {i}." for i in range(1, 11)]


@pytest.fixture
@mark_users("server")
def rated(tiny_llama, trained_run, tmp_path, patient_expect):
    """A data root holding the SFT run and an evaluation of it against the base on ten prompts,
    rated by three raters who prefer the SFT replies."""
    from ratings.store import Store
    from tuner.paths import Layout

    layout = Layout(tmp_path / "home")
    sft = trained_run.parent
    shutil.copytree(sft, layout.runs / sft.name)
    store = Store(layout.ratings_db)
    variants = [{"name": "base", "label": "base (tiny)", "kind": "base"},
                {"name": sft.name, "label": f"lora: {sft.name}", "kind": "lora"}]
    eval_id = open_evaluation(store, "greetings, round 1", tiny_llama, PROMPTS, variants, reply_settings={},
                              reply=lambda p, variant, k: f"meh {p['position']} " + "and so on " * 12 if variant == "base"
                              else "Hello there, friend!")
    import random

    rng = random.Random(2)
    for rater in ("ann", "bob", "cy"):
        while (pair := store.next_pair(eval_id, rater, rng)) is not None:
            score = {True: 5, False: 2}
            store.rate_pair(pair["assignment_id"], rater, score[pair["reply_a"].startswith("Hello")],
                            score[pair["reply_b"].startswith("Hello")])
    demo, url = serve(layout.root, tiny_llama)
    yield url, sft.name, layout
    demo.close()


def test_ratings_become_a_preference_run_that_is_compared_and_ranked(rated, page):
    from playwright.sync_api import expect

    url, sft_id, layout = rated
    ARTIFACTS.mkdir(exist_ok=True)
    page.goto(url)

    # Results: the owner corrects a low-rated base reply; it becomes a chosen answer
    page.get_by_role("tab", name="Results").click()
    page.get_by_text("Correct low-rated replies").click()
    expect(page.locator("#correct-reply input")).to_have_value(re.compile(r"base \(tiny\) · mean 2\.0"))
    expect(page.locator("#correct-shown")).to_contain_text("meh")
    page.locator("#correct-text textarea").fill("Good evening, dear guest, and welcome!")
    page.locator("#correct-save").click()
    expect(page.locator("#correct-note")).to_contain_text("Correction saved")
    expect(page.locator("#correct-note")).to_contain_text("11 preference pairs over 10 prompts")

    # Train: DPO from the SFT run on the evaluation's scores; the counts come before Start
    page.get_by_role("tab", name="Train").click()
    page.locator("#train-method").get_by_label("dpo").check()
    expect(page.locator("#pref-counts")).to_contain_text("This evaluation gives 11 preference pairs")
    expect(page.locator("#pref-init input")).to_have_value(re.compile(re.escape(sft_id)))
    # what the run will do: the SFT adapter goes on as it was trained (LoRA's settings hidden, its own
    # said), no supervised recipe or suggestion, and how long it takes
    expect(page.locator("#pref-adapter")).to_contain_text(f"Continues the adapter of {sft_id}")
    expect(page.locator("#pref-adapter")).to_contain_text("rank 8")
    for hidden in ("#train-targets", "#train-recipe", "#train-recipe-use", "#train-suggest"):
        expect(page.locator(hidden)).to_be_hidden()
    expect(page.get_by_label("LoRA rank (r)").first).to_be_hidden()
    expect(page.locator("#pref-counts")).to_contain_text("estimated time")
    # every rejected reply is longer than its chosen one ("meh 3 and so on…" against "Hello there,
    # friend!"): said, with the SFT term as the advice, one click away
    expect(page.locator("#pref-counts")).to_contain_text("⚠️ Length: in")
    expect(page.locator("#pref-counts")).to_contain_text("the rejected reply is the longer")
    expect(page.locator("#pref-counts")).to_contain_text("(rpo_alpha 10) keeps their length")
    # each method's own settings show under it alone: KTO's thresholds under KTO, DPO's under DPO
    dpo_only = [page.get_by_label(label) for label in (
        "DPO: least difference of mean scores", "DPO: weight of an SFT term on the chosen replies (rpo_alpha)",
        "DPO: weight of the longer reply's extra tokens (ld_alpha)")]
    kto_only = [page.get_by_label(label) for label in (
        "KTO: desirable at a mean of at least", "KTO: undesirable at a mean of at most")]
    for shown in dpo_only:
        expect(shown).to_be_visible()
    for hidden in kto_only:
        expect(hidden).to_be_hidden()
    page.locator("#train-method").get_by_label("kto").check()
    for shown in kto_only:
        expect(shown).to_be_visible()
    for hidden in dpo_only + [page.locator("#pref-use-rpo")]:
        expect(hidden).to_be_hidden()
    expect(page.get_by_label("β (beta)")).to_be_visible()
    page.screenshot(path=str(ARTIFACTS / "preference-kto.png"), full_page=True)
    page.locator("#train-method").get_by_label("dpo").check()
    expect(page.locator("#pref-use-rpo")).to_be_visible()
    for shown in dpo_only:
        expect(shown).to_be_visible()
    for hidden in kto_only:
        expect(hidden).to_be_hidden()
    # a margin no pair reaches: refused before Start, saying how many are needed
    page.get_by_label("DPO: least difference of mean scores").fill("4")
    page.get_by_label("DPO: least difference of mean scores").press("Tab")
    expect(page.locator("#pref-counts")).to_contain_text("DPO needs at least 8")
    page.locator("#train-start").click()
    expect(page.locator("#train-message")).to_contain_text("Too few to train on")
    page.get_by_label("DPO: least difference of mean scores").fill("1")
    page.get_by_label("DPO: least difference of mean scores").press("Tab")
    expect(page.locator("#pref-counts")).to_contain_text("11 preference pairs")
    # the advice the warning gives: an SFT term on the chosen replies, beside β, set by its button,
    # which then goes, and the advice with it (the warning stays)
    rpo = page.get_by_label("DPO: weight of an SFT term on the chosen replies (rpo_alpha)")
    expect(rpo).to_be_visible()
    expect(rpo).to_have_value("0")
    expect(page.get_by_label("DPO: weight of the longer reply's extra tokens (ld_alpha)")).to_have_value("1")
    expect(page.locator("#pref-use-rpo")).to_be_visible()
    page.screenshot(path=str(ARTIFACTS / "preference-length-advice.png"), full_page=True)
    expect(page.locator("#pref-use-rpo")).to_have_text("Set DPO's SFT term on the chosen replies to rpo_alpha 10")
    page.locator("#pref-use-rpo").click()
    expect(rpo).to_have_value("10")
    expect(page.locator("#pref-use-rpo")).to_be_hidden()
    expect(page.locator("#pref-counts")).not_to_contain_text("keeps their length")
    expect(page.locator("#pref-counts")).to_contain_text("the rejected reply is the longer")
    page.get_by_label("Max steps (-1: use epochs)").fill("4")
    page.get_by_label("Max steps (-1: use epochs)").press("Tab")
    page.locator("#train-run-name input, #train-run-name textarea").first.fill("dpo round 1")
    page.locator("#train-start").click()
    expect(page.locator("#train-message")).to_contain_text("DPO on 11 preference pairs")
    expect(page.locator("#train-progress")).to_contain_text("completed", timeout=180_000)
    expect(page.locator("#reward-chart")).to_contain_text("reward margin")
    for chart in ("#loss-chart", "#reward-chart"):
        assert_chart_drawn(page.locator(chart))
    expect(page.locator("#runs-table")).to_contain_text("dpo round 1")
    from tuner import records
    configs = [records.read_record(r)["config"] for r in layout.runs.iterdir() if records.record_file(r).exists()]
    trained = [c for c in configs if c["method"] == "dpo"]
    assert [(c["rpo_alpha"], c["ld_alpha"]) for c in trained] == [(10.0, 1.0)], trained
    page.screenshot(path=str(ARTIFACTS / "preference-train.png"), full_page=True)

    # Compare: base, SFT and DPO in one evaluation, on prompts neither run trained on
    page.get_by_role("tab", name="Compare").click()
    page.locator("#eval-name input, #eval-name textarea").first.fill("greetings, round 2")
    pick(page, "compare-run", sft_id)
    pick(page, "compare-run", "dpo round 1")
    page.keyboard.press("Escape")
    # the form is filled from the run's recipe (or says there is none) before the cap is typed
    expect(page.locator("#eval-recipe-note")).to_contain_text(re.compile("[Rr]ecipe"))
    page.locator("#eval-source").get_by_label("typed prompts").check()
    # the first round's ten prompts (nine of them DPO's training rows, one its validation row) and two new
    page.locator("#compare-prompts textarea").fill("\n".join(PROMPTS + ["Welcome a new neighbour.",
                                                                        "Say hello to a friend."]))
    page.get_by_text("Generation settings, keyword rules, invite code").click()
    page.get_by_label("number input for Max new tokens").fill("8")
    page.get_by_label("number input for Max new tokens").press("Enter")
    page.locator("#generate").click()
    message = page.locator("#generate-message")
    expect(message).to_contain_text("Generated 3 × 3 replies", timeout=120_000)
    expect(message).to_contain_text("Left out 9 of 12 prompts that a chosen preference run learned from")
    expect(page.locator("#eval-replies")).to_contain_text("dpo: dpo round 1")
    # 8 tokens cut the replies: the owner opens rating anyway
    page.locator("#cut-open").click()
    expect(message).to_contain_text("opened for rating as it is")

    # two friends rate the new evaluation (the owner's panel on Compare): each is served one pair of
    # each prompt, the least-rated pairs first, so between them every model meets another
    for rater in ("Dee", "Eve"):
        page.locator("#rate-name input, #rate-name textarea").first.fill(rater)
        page.locator("#rate-start").click()
        for k in range(1, 4):
            expect(page.locator("#rate-progress")).to_contain_text(f"pair {k} of 3")
            page.locator("#rate-score-a").get_by_label("4").check()
            page.locator("#rate-score-b").get_by_label("2").check()
            page.locator("#rate-submit").click()
            if k < 3:
                page.locator("#rate-next").click()

    # Leaderboard: every variant ever rated, the DPO run among them
    page.get_by_role("tab", name="Leaderboard").click()
    board = page.locator("#leaderboard-table")
    expect(board).to_contain_text("dpo round 1")
    expect(board).to_contain_text(sft_id)
    expect(board).to_contain_text("base (")
    page.screenshot(path=str(ARTIFACTS / "preference-leaderboard.png"), full_page=True)
