"""The Dataset tab in a real browser (Playwright driving Debian's Chromium):
import a Dolly-shaped file with bad lines, filter it by keyword, split it
70/20/10 stratified by category, edit a row, measure token lengths, export.
"""

from __future__ import annotations

import csv
import io
import json
import random
import re
from collections import Counter

from browser import ARTIFACTS, assert_chart_drawn, opened, pick

from tuner import data as tdata

CATEGORIES = {"closed_qa": 24, "open_qa": 18, "creative_writing": 12, "brainstorming": 6}


def dolly_file(path):
    """60 Dolly-shaped rows (12 mention email) and two bad lines (3 and 9)."""
    rng = random.Random(0)
    cats = [c for c, n in CATEGORIES.items() for _ in range(n)]
    rng.shuffle(cats)
    lines = []
    for i, cat in enumerate(cats):
        topic = "an email" if i % 5 == 0 else "a poem"
        lines.append(json.dumps({"instruction": f"Write {topic} about item {i}.", "context": "",
                                 "response": f"Here is {topic} about item {i}.", "category": cat}))
    lines.insert(2, "{broken")
    lines.insert(8, json.dumps({"instruction": "No answer", "context": "", "response": "", "category": "open_qa"}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_import_filter_split_edit_export_in_the_browser(app_url, page, tmp_path):
    from playwright.sync_api import expect

    ARTIFACTS.mkdir(exist_ok=True)
    saved = tmp_path / "home" / "datasets"
    message = opened(page, app_url)

    # import: the shape is detected, bad lines are named, the rest saved
    page.locator("#dataset-upload input[type=file]").set_input_files(str(dolly_file(tmp_path / "dolly_sample.jsonl")))
    expect(message).to_contain_text("60 rows imported from dolly_sample.jsonl (Dolly format)")
    expect(message).to_contain_text("line 3: not valid JSON")
    expect(message).to_contain_text('line 9: "response" (assistant reply) is empty')
    expect(page.locator("#dataset-chooser input")).to_have_value("saved: dolly_sample")

    # filter: a live count, then the kept rows saved as version 2
    page.get_by_role("tab", name="Filter").click()
    expect(page.locator("#filter-message")).to_contain_text("all 60 rows are kept")
    page.locator("#filter-words textarea, #filter-words input").first.fill("email")
    expect(page.locator("#filter-message")).to_contain_text("Keeps 12 of 60 rows")
    expect(page.locator("#filter-counts")).to_contain_text('keep rows with any of "email"')
    page.locator("#filter-save").click()
    expect(message).to_contain_text("12 rows kept of 60, saved as dolly_sample-v2.jsonl")
    expect(page.locator("#dataset-chooser input")).to_have_value("saved: dolly_sample-v2")
    # back to all 60 rows for the split
    pick(page, "dataset-chooser", "saved: dolly_sample")
    expect(message).to_contain_text("60 rows in dolly_sample.jsonl")

    # split: 70/20/10 stratified by category, counts per stratum, then saved
    page.get_by_role("tab", name="Split").click()
    for elem, value in (("split-train", "70"), ("split-validation", "20"), ("split-test", "10")):
        box = page.locator(f"#{elem} input")
        box.fill(value)
        box.press("Tab")
    pick(page, "split-stratify", "category")
    expect(page.locator("#split-message")).to_contain_text("Split 70/20/10, stratified by category")
    counts = page.locator("#split-counts")
    expect(counts).to_contain_text("closed_qa")
    expect(counts).to_contain_text("71% / 21% / 8%")  # closed_qa: 24 rows → 17 / 5 / 2
    page.screenshot(path=str(ARTIFACTS / "dataset-split.png"), full_page=True)
    page.locator("#split-save").click()
    expect(message).to_contain_text("saved as dolly_sample-v3.jsonl")
    rows = tdata.load_jsonl(saved / "dolly_sample-v3.jsonl").rows
    assert Counter(r["split"] for r in rows) == {"train": 42, "validation": 12, "test": 6}
    assert Counter(r["split"] for r in rows if r["category"] == "closed_qa") == {"train": 17, "validation": 5,
                                                                                  "test": 2}
    expect(page.locator("#dataset-versions")).to_contain_text("split 70/20/10, stratified by category, seed 0")

    # edit: inline validation names the problem; a replaced row is saved as a new version
    page.get_by_role("tab", name="Edit rows").click()
    page.locator("#edit-clear").click()
    page.locator("#edit-add").click()
    expect(message).to_contain_text("Not saved: add a turn")
    first_user = page.locator("#dataset-table [data-testid='cell-0-1']")
    expect(first_user).to_contain_text("Write an email about item 0.")
    first_user.click()
    expect(page.locator("#edit-row input")).to_have_value("1")
    expect(page.locator("#edit-meta textarea, #edit-meta input").first).to_have_value(re.compile('"split"'))
    page.locator("#edit-system textarea, #edit-system input").first.fill("You write short texts.")
    expect(page.locator("#edit-check")).to_contain_text("Ready")
    page.locator("#edit-replace").click()
    expect(message).to_contain_text("Row 1 replaced")
    expect(page.locator("#dataset-versions")).to_contain_text("1 unsaved change")
    page.locator("#dataset-save").click()
    expect(message).to_contain_text("saved as dolly_sample-v4.jsonl")
    edited = tdata.load_jsonl(saved / "dolly_sample-v4.jsonl").rows
    assert edited[0]["messages"][0] == {"role": "system", "content": "You write short texts."}
    assert tdata.load_jsonl(saved / "dolly_sample-v3.jsonl").rows == rows  # the old version is untouched

    # inspect and export: token lengths with the base model's tokenizer, the test split as CSV
    page.get_by_role("tab", name="Inspect & export").click()
    page.locator("#inspect-measure").click()
    expect(page.locator("#inspect-summary")).to_contain_text("0 of 60 rows are longer than 256 tokens")
    expect(page.locator("#inspect-histogram [aria-roledescription='bar']").first).to_be_attached()
    assert_chart_drawn(page.locator("#inspect-histogram"))
    page.locator("#export-part").get_by_label("test").check()
    page.locator("#export-format").get_by_label("CSV").check()
    page.locator("#export-button").click()
    expect(page.locator("#export-message")).to_contain_text("dolly_sample-v4-test.csv is ready")
    link = page.locator("#export-file a[href*='dolly_sample-v4-test.csv']")
    expect(link).to_be_attached()
    exported = list(csv.DictReader(io.StringIO(page.request.get(link.get_attribute("href")).text())))
    assert len(exported) == 6 and {r["split"] for r in exported} == {"test"}
    page.screenshot(path=str(ARTIFACTS / "dataset.png"), full_page=True)


def test_support_csv_mapped_top_brands_downsampled_split_80_10_10(app_url, page, tmp_path):
    from playwright.sync_api import expect

    saved = tmp_path / "home" / "datasets"
    message = opened(page, app_url)

    # the CSV's columns fit no shape: the settings open with a guessed mapping
    page.get_by_text("Import settings").click()
    pick(page, "starter-file", "customer_support.csv")
    page.locator("#import-starter").click()
    expect(message).to_contain_text("match no known shape")
    expect(message).to_contain_text("Nothing was saved")
    expect(page.locator("#import-shape input")).to_have_value("custom mapping")
    expect(page.locator("#map-user input")).to_have_value("customer_message")
    expect(page.locator("#map-assistant input")).to_have_value("agent_reply")
    page.locator("#import-again").click()
    expect(message).to_contain_text(re.compile(r"\d+ rows imported from customer_support.csv \(column mapping\)"))
    total = len(tdata.load_jsonl(saved / "customer_support.jsonl").rows)

    # the 5 most frequent brands, downsampled to 200 with a seed
    page.get_by_role("tab", name="Filter").click()
    pick(page, "filter-column", "brand")
    page.locator("#filter-top").click()
    expect(page.locator("#filter-values")).to_contain_text("Nimbus Mobile")
    box = page.locator("#filter-sample input")
    box.fill("200")
    box.press("Tab")
    expect(page.locator("#filter-message")).to_contain_text(f"Keeps 200 of {total} rows")
    expect(page.locator("#filter-counts")).to_contain_text("random 200 (seed 0)")
    page.locator("#filter-save").click()
    expect(message).to_contain_text("saved as customer_support-v2.jsonl")
    kept = tdata.load_jsonl(saved / "customer_support-v2.jsonl").rows
    assert len(kept) == 200 and len({r["brand"] for r in kept}) == 5

    # 80/10/10 is the default split
    page.get_by_role("tab", name="Split").click()
    expect(page.locator("#split-message")).to_contain_text("Split 80/10/10, seed 0")
    page.locator("#split-save").click()
    expect(message).to_contain_text("saved as customer_support-v3.jsonl")
    rows = tdata.load_jsonl(saved / "customer_support-v3.jsonl").rows
    assert Counter(r["split"] for r in rows) == {"train": 160, "validation": 20, "test": 20}


def test_write_a_multi_turn_dataset_from_scratch_and_expand_it(app_url, page, tmp_path):
    from playwright.sync_api import expect

    saved = tmp_path / "home" / "datasets"
    message = opened(page, app_url)
    page.locator("#dataset-new").click()
    expect(message).to_contain_text("A new, empty dataset")

    def cell(row, col, text):
        # type only once the cell's editor is open and focused: keys sent earlier (a busy
        # machine) were lost, e.g. "Tell me a joke" saved as "ell me a joke"
        target = page.locator(f"#edit-turns [data-testid='cell-{row}-{col}']")
        target.dblclick()
        editor = target.locator("textarea, input").first
        expect(editor).to_be_focused()
        page.keyboard.type(text)
        expect(editor).to_have_value(text)
        page.keyboard.press("Enter")

    page.locator("#edit-system textarea, #edit-system input").first.fill("Be brief.")
    cell(0, 0, "Hello there")
    cell(0, 1, "Hi! How can I help?")
    page.locator("#edit-add-turn").click()
    cell(1, 0, "Tell me a joke")
    expect(page.locator("#edit-check")).to_contain_text("turn 2: the assistant reply is empty")
    cell(1, 1, "Why did the chicken cross the road?")
    expect(page.locator("#edit-check")).to_contain_text("Ready")
    page.locator("#edit-add").click()
    expect(message).to_contain_text("Row 1 added")
    page.locator("#dataset-save").click()
    expect(message).to_contain_text("saved as my-dataset.jsonl")
    assert [(m["role"], m["content"]) for m in tdata.load_jsonl(saved / "my-dataset.jsonl").rows[0]["messages"]] == [
        ("system", "Be brief."), ("user", "Hello there"), ("assistant", "Hi! How can I help?"),
        ("user", "Tell me a joke"), ("assistant", "Why did the chicken cross the road?")]

    # the loaded model proposes a paraphrase; the ticked one is added to the draft
    page.get_by_role("tab", name="Expand").click()
    page.locator("#expand-n input").fill("1")
    page.locator("#expand-max-new input[type=number]").fill("16")
    page.locator("#expand-propose").click()
    expect(page.locator("#expand-message")).to_contain_text("1 proposal(s) from", timeout=60_000)
    expect(page.locator("#expand-proposals")).to_contain_text("Tell me a joke")
    page.locator("#expand-add").click()
    expect(message).to_contain_text(re.compile(r"1 paraphrase\(s\) added|Tick at least one"))
