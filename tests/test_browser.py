"""The whole loop in a real browser: Playwright driving Debian's Chromium.

Dataset (a bad upload) → Train (the loss chart gains points on both curves,
a reload shows the live run, Stop keeps it) → Compare (generate, rate blind,
reveal) → Results (the success table changes), on the tiny random Llama.
"""

from __future__ import annotations

import re

from browser import ARTIFACTS, assert_chart_drawn, pick as _pick


def _step(page) -> int:
    text = page.locator("#train-progress").inner_text()
    match = re.search(r"step (\d+)/(\d+)", text)
    return int(match.group(1)) if match else 0


def test_whole_loop_in_the_browser(app_url, page):
    import time

    from playwright.sync_api import expect

    t0 = time.time()

    def mark(label):
        print(f"[{time.time() - t0:6.1f}s] {label}", flush=True)

    ARTIFACTS.mkdir(exist_ok=True)
    page.goto(app_url)

    # Dataset: the starter set is listed with its rows and count
    _pick(page, "dataset-chooser", "starter: polite_assistant")
    expect(page.locator("#dataset-message")).to_contain_text("26 rows")
    expect(page.locator("#dataset-table")).to_contain_text("capital")

    # a bad upload: each bad line named, the valid rows kept and saved
    bad = ARTIFACTS / "mixed.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}\n'
                   '{oops\n{"messages": [{"role": "user", "content": "No reply"}]}\n', encoding="utf-8")
    page.locator("#dataset-upload input[type=file]").set_input_files(str(bad))
    message = page.locator("#dataset-message")
    expect(message).to_contain_text("1 rows imported from mixed.jsonl")
    expect(message).to_contain_text("line 2: not valid JSON")
    expect(message).to_contain_text("line 3: the conversation does not end with an assistant reply")
    _pick(page, "dataset-chooser", "starter: polite_assistant")
    expect(message).to_contain_text("26 rows")

    mark("dataset done")
    # Train: the estimate, then start; the chart gains points on both curves
    page.get_by_role("tab", name="Train").click()
    expect(page.locator("#train-estimate")).to_contain_text("Trainable:")
    # the starter set's recipe is offered, not applied: the epochs stay the default until asked
    expect(page.locator("#train-recipe")).to_contain_text("Recommended for this dataset")
    expect(page.locator("#train-recipe")).to_contain_text("expected ~")
    expect(page.get_by_label("number input for Epochs")).to_have_value("3")
    # twenty epochs: far more steps than the test waits for, so it never races the run
    page.get_by_label("number input for Epochs").fill("20")
    page.get_by_label("number input for Epochs").press("Enter")
    page.get_by_text("More settings").click()
    page.get_by_label("Eval every N steps").fill("2")
    page.get_by_label("Eval every N steps").press("Tab")
    # what Start trains is named beside it
    expect(page.locator("#train-what")).to_contain_text("Start trains starter: polite_assistant on")
    expect(page.locator("#train-dataset input")).to_have_value("starter: polite_assistant")
    page.locator("#train-run-name input, #train-run-name textarea").first.fill("browser run")
    page.locator("#train-start").click()
    expect(page.locator("#train-message")).to_contain_text("Started run")
    expect(page.locator("#train-message")).to_contain_text("browser run")
    # the new run's line at once (no earlier run's line lingering until the next tick)
    started_id = re.search(r"Started run (\S+) ", page.locator("#train-message").inner_text()).group(1)
    expect(page.locator("#train-progress")).to_contain_text(f"Run {started_id}")
    expect(page.locator("#train-progress")).to_contain_text(re.compile(r"step \d+/100"), timeout=60_000)
    mark("training started")
    first = _step(page)
    page.wait_for_function(
        r"() => /step (\d+)\//.exec(document.querySelector('#train-progress').innerText)?.[1] > " + str(first))
    assert _step(page) > first
    points = page.locator('#loss-chart [aria-roledescription="point"]')
    expect(points.first).to_be_attached()
    seen = points.count()
    page.wait_for_function(
        "() => document.querySelectorAll('#loss-chart [aria-roledescription=point]').length > " + str(seen))
    expect(page.locator("#loss-chart")).to_contain_text("validation loss", timeout=60_000)
    expect(page.locator("#loss-chart")).to_contain_text("training loss")
    expect(page.locator("#lr-chart [aria-roledescription='point']").first).to_be_attached()
    for chart in ("#loss-chart", "#lr-chart"):
        assert_chart_drawn(page.locator(chart))
    assert int(page.locator("#train-bar").get_attribute("data-step")) > 0
    expect(page.locator("#train-progress")).to_contain_text("tokens/s")
    # a second Start while one runs is refused with a message
    page.locator("#train-start").click()
    expect(page.locator("#train-message")).to_contain_text("still running")
    mark("reload")
    # a reload shows the same live run
    run_id = re.search(r"Run (\S+):", page.locator("#train-progress").inner_text()).group(1)
    page.reload()
    page.get_by_role("tab", name="Train").click()
    expect(page.locator("#train-progress")).to_contain_text(f"Run {run_id}: running")
    page.screenshot(path=str(ARTIFACTS / "training.png"), full_page=True)
    mark("stop")
    # Stop keeps what was trained, says so, and lists the run
    page.locator("#train-stop").click()
    expect(page.locator("#train-progress")).to_contain_text("stopped", timeout=60_000)
    # "Stopping after the current step…" gives way to how it ended
    expect(page.locator("#train-message")).to_contain_text(f"Run {run_id} stopped.")
    expect(page.locator("#train-summary")).to_contain_text(f"Run {run_id} (browser run) stopped")
    expect(page.locator("#train-summary")).to_contain_text("best validation loss")
    expect(page.locator("#runs-table")).to_contain_text("stopped")
    expect(page.locator("#runs-table")).to_contain_text("browser run")  # the owner's name for it
    page.screenshot(path=str(ARTIFACTS / "train.png"), full_page=True)

    mark("compare")
    # Compare: an evaluation from the run's held-out prompts, rated blind, then revealed
    page.get_by_role("tab", name="Compare").click()
    page.locator("#eval-name input, #eval-name textarea").first.fill("polite, held out")
    # a cap typed by hand first: the run's recipe fills the rest of the form and keeps it
    page.get_by_text("Generation settings, keyword rules, invite code").click()
    cap = page.get_by_label("number input for Max new tokens")
    expect(cap).to_have_value("0")  # drawn with its default before the owner types over it
    cap.fill("16")
    cap.press("Enter")
    expect(cap).to_have_value("16")
    page.wait_for_timeout(1000)  # a person's pause: the edit is noted before the next click
    _pick(page, "compare-run", "stopped")
    page.keyboard.press("Escape")
    expect(page.locator("#eval-recipe-note")).to_contain_text("Checks, temperature, repetition penalty and batch size from the polite_assistant recipe (3 checks")
    expect(cap).to_have_value("16")
    # this round shows raters which model wrote which after each pair (the default: after the last)
    page.locator("#eval-reveal").get_by_label("after each pair").check()
    # the dataset's recipe fills the automatic checks
    expect(page.locator("#eval-checks textarea")).to_have_value(re.compile("not contains: As an AI"))
    page.locator("#generate").click()
    expect(page.locator("#generate-message")).to_contain_text("Generated 5 × 2 replies", timeout=120_000)
    # 16 tokens cut the replies: rating waits for the owner's choice, who opens it anyway
    expect(page.locator("#cut-note")).to_contain_text("cut at the 16-token cap")
    page.locator("#cut-open").click()
    # an invite code is made by default, and shown to the owner with the link to share
    expect(page.locator("#generate-message")).to_contain_text("Raters need the invite code")
    expect(page.locator("#eval-replies")).to_contain_text("base (")
    expect(page.locator("#eval-replies")).to_contain_text("lora: browser run (")
    # generation ends with the automatic check: a verdict in words, pass rates, the paired test
    expect(page.locator("#generate-message")).to_contain_text(re.compile(r"passes every check on \d+/5 prompts, "
                                                                         r"base \d+/5"))
    expect(page.locator("#check-table")).to_contain_text("cut at the token cap")
    expect(page.locator("#check-table")).to_contain_text("not contains: As an AI")
    expect(page.locator("#check-paired")).to_contain_text("McNemar exact")
    mark("generated")
    # Results before any rating: the table has no rows yet
    page.get_by_role("tab", name="Results").click()
    expect(page.locator("#success-table")).not_to_contain_text("lora")
    page.get_by_role("tab", name="Compare").click()
    page.locator("#rate-name input, #rate-name textarea").first.fill("Ana")
    page.locator("#rate-start").click()
    expect(page.locator("#rate-progress")).to_contain_text("pair 1 of 5")
    # blind: nothing in the rating view says which reply is which before the commit
    expect(page.locator("#rate-reveal")).to_have_text("")
    rating_view = " ".join(page.locator(f"#rate-{part}").inner_text() for part in ("prompt", "progress"))
    assert "base" not in rating_view and run_id not in rating_view
    page.locator("#rate-score-a").get_by_label("5").check()
    page.locator("#rate-score-b").get_by_label("2").check()
    page.locator("#rate-submit").click()
    expect(page.locator("#rate-reveal")).to_contain_text("Reply A")
    expect(page.locator("#rate-reveal")).to_contain_text("base (")
    page.screenshot(path=str(ARTIFACTS / "compare.png"), full_page=True)
    page.locator("#rate-next").click()
    expect(page.locator("#rate-progress")).to_contain_text("pair 2 of 5")

    mark("results")
    # Results: the success table now shows the ratings just made
    page.get_by_role("tab", name="Results").click()
    table = page.locator("#success-table")
    expect(table).to_contain_text("lora")
    expect(table).to_contain_text("1/1")
    expect(table).to_contain_text("0/1")
    # the automatic check beside the human scores, with its agreement (too few ratings yet)
    expect(page.locator("#results-checks")).to_contain_text("all checks")
    expect(page.locator("#results-checks-note")).to_contain_text("Agreement with the raters")
    page.screenshot(path=str(ARTIFACTS / "results.png"), full_page=True)

    # a reload (or a friend's browser) sees the new evaluation and dataset in the lists
    page.reload()
    page.get_by_role("tab", name="Compare").click()
    page.locator("#rate-eval input").click()
    expect(page.get_by_role("option", name=re.compile("polite, held out"))).to_be_visible()
    page.keyboard.press("Escape")
    page.get_by_role("tab", name="Dataset").click()
    page.locator("#dataset-chooser input").click()
    expect(page.get_by_role("option", name="saved: mixed")).to_be_visible()
