"""A new user's first round, in a real browser, on files the app has never seen:
dataset upload → two runs (LoRA and prompt tuning) → one evaluation of three models →
two friends rating at the same time on /rate → Results → Leaderboard.

What a person sees is checked: every chart drawn (visible size, marks), every model
in the Results table with its scores, no "not compared yet" once both friends are
done, and no uncaught page error on any page (the `chromium` fixture fails the test
on one)."""

from __future__ import annotations

import json
import re

from browser import ARTIFACTS, assert_chart_drawn, pick

PROMPTS = 40  # 20% held out for Compare: 8 prompts


def _dataset(path):
    colours = ["blue", "green", "red", "amber", "teal"]
    rows = [{"messages": [{"role": "user", "content": f"What colour is crate {i} in the north depot?"},
                          {"role": "assistant", "content": f"Crate {i} is {colours[i % 5]}."}]}
            for i in range(PROMPTS)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _train(page, name: str, method: str) -> str:
    from playwright.sync_api import expect

    page.locator("#train-method").get_by_label(method, exact=True).check()
    page.locator("#train-run-name input, #train-run-name textarea").first.fill(name)
    page.locator("#train-start").click()
    expect(page.locator("#train-message")).to_contain_text("Started run")
    run_id = re.search(r"Started run (\S+) ", page.locator("#train-message").inner_text()).group(1)
    expect(page.locator("#train-progress")).to_contain_text(f"Run {run_id}: completed", timeout=240_000)
    for chart in ("#loss-chart", "#lr-chart"):
        assert_chart_drawn(page.locator(chart))
    return run_id


def _join(page, url: str, name: str) -> None:
    from playwright.sync_api import expect

    page.goto(f"{url}/rate")
    page.locator("#rater-eval input").click()
    page.get_by_role("option", name=re.compile("crates, held out")).click()
    page.locator("#rater-name input, #rater-name textarea").first.fill(name)
    page.locator("#rater-code input, #rater-code textarea").first.fill("tea")
    page.locator("#rater-start").click()
    expect(page.locator("#rater-progress")).to_contain_text(f"{name} · pair 1 of 8")


def _rate(page, a: str, b: str, done: int) -> None:
    from playwright.sync_api import expect

    page.locator("#rater-score-a").get_by_label(a, exact=True).check()
    page.locator("#rater-score-b").get_by_label(b, exact=True).check()
    page.locator("#rater-submit").click()
    expect(page.locator("#rater-reveal")).to_contain_text(f"{done} of 8 done" if done < 8 else "your last pair")


def test_a_new_user_trains_two_runs_and_two_friends_rate_all_three_models(app_url, chromium, tmp_path):
    import time

    from playwright.sync_api import expect

    t0 = time.time()

    def mark(label):
        print(f"[{time.time() - t0:6.1f}s] {label}", flush=True)

    ARTIFACTS.mkdir(exist_ok=True)
    owner = chromium.new_page()
    owner.goto(app_url)
    # the page has loaded once the Dataset tab shows the default starter set (an upload before that
    # is answered first, then overwritten by the page's own load)
    expect(owner.locator("#dataset-message")).to_contain_text("26 rows")

    # Dataset: a file of the user's own
    owner.locator("#dataset-upload input[type=file]").set_input_files(str(_dataset(tmp_path / "crates.jsonl")))
    expect(owner.locator("#dataset-message")).to_contain_text(f"{PROMPTS} rows imported from crates.jsonl")
    mark("dataset")

    # Train: two runs of the new dataset, each ending with its charts drawn
    owner.get_by_role("tab", name="Train").click()
    expect(owner.locator("#train-dataset input")).to_have_value("saved: crates")
    owner.get_by_label("number input for Epochs").fill("2")
    owner.get_by_label("number input for Epochs").press("Enter")
    lora = _train(owner, "crates lora", "lora")
    mark("lora run")
    soft = _train(owner, "crates soft prompt", "prompt_tuning")
    mark("prompt tuning run")
    # the two finished runs overlaid: drawn, both curves there
    pick(owner, "runs-picked", lora)
    pick(owner, "runs-picked", soft)
    owner.keyboard.press("Escape")
    overlay = owner.locator("#runs-overlay")
    expect(overlay).to_contain_text("crates lora")
    expect(overlay).to_contain_text("crates soft prompt")
    assert_chart_drawn(overlay)

    # Compare: the base and both runs on the held-out prompts
    owner.get_by_role("tab", name="Compare").click()
    owner.locator("#eval-name input, #eval-name textarea").first.fill("crates, held out")
    pick(owner, "compare-run", "crates lora")
    pick(owner, "compare-run", "crates soft prompt")
    owner.keyboard.press("Escape")
    owner.get_by_text("Generation settings, keyword rules, invite code").click()
    owner.locator("#eval-invite input, #eval-invite textarea").first.fill("tea")
    owner.locator("#generate").click()
    expect(owner.locator("#generate-message")).to_contain_text("Generated 8 × 3 replies", timeout=240_000)
    # a random-weight model writes to the cap: the owner is asked before rating opens
    gate = owner.locator("#cut-note")
    expect(gate).to_contain_text(re.compile(r"\d+ of 24 replies were cut at the \d+-token cap"))
    expect(owner.locator("#generate-message")).not_to_contain_text("invite code **")
    owner.locator("#cut-open").click()
    expect(owner.locator("#generate-message")).to_contain_text("Raters need the invite code")
    expect(owner.locator("#eval-replies")).to_contain_text("crates soft prompt")
    mark("generated")

    # Two friends at the same time: each is served a pair before the other submits
    ana, ben = chromium.new_page(), chromium.new_page()
    _join(ana, app_url, "Ana")
    _join(ben, app_url, "Ben")
    for done in range(1, 9):
        _rate(ana, "5", "2", done)
        _rate(ben, "4", "3", done)
        if done < 8:
            for friend in (ana, ben):
                friend.locator("#rater-next").click()
                expect(friend.locator("#rater-progress")).to_contain_text(f"pair {done + 1} of 8")
    # the reveal after the last pair names the models, the prompt-tuned one among them
    expect(ana.locator("#rater-reveal")).to_contain_text("crates soft prompt")
    ana.screenshot(path=str(ARTIFACTS / "new-user-rater.png"), full_page=True)
    mark("rated")

    # Results: every model has a row with its scores, every chart is drawn
    owner.get_by_role("tab", name="Results").click()
    owner.locator("#results-refresh").click()
    table = owner.locator("#success-table")
    for label in ("base", "crates lora", "crates soft prompt"):
        expect(table).to_contain_text(label)
    expect(owner.locator("#results-summary")).not_to_contain_text("not compared yet")
    for chart in ("#results-distribution", "#results-success-plot", "#results-loss"):
        assert_chart_drawn(owner.locator(chart))
    owner.screenshot(path=str(ARTIFACTS / "new-user-results.png"), full_page=True)
    mark("results")

    # Leaderboard: the three models ranked, its chart drawn, raw and length-controlled
    owner.get_by_role("tab", name="Leaderboard").click()
    board = owner.locator("#leaderboard-table")
    for label in ("base", "crates lora", "crates soft prompt"):
        expect(board).to_contain_text(label)
    assert_chart_drawn(owner.locator("#leaderboard-chart"))
    owner.locator("#leaderboard-mode").get_by_label("Length-controlled").check()
    expect(owner.locator("#leaderboard-notes")).to_contain_text("length")
    assert_chart_drawn(owner.locator("#leaderboard-chart"))
    mark("leaderboard")
