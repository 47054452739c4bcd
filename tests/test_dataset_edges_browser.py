"""Rough edges of the Dataset tab found in real use, in a real browser
(Playwright driving Debian's Chromium) on the tiny random Llama: a CSV of
unknown columns gets a first guess of its mapping; Expand says why it made
fewer proposals, flags off-topic ones, adds a batch once, never paraphrases a
paraphrase and saves with a note that counts them; picking another version
keeps unsaved changes; the row editor is empty after "Add as a new row".
"""

from __future__ import annotations

import json
import re

from browser import opened, pick

from tuner import data as tdata


def edit_cell(page, row, col, text):
    """Type into a cell of the editor's turns once its editor is open and focused."""
    from playwright.sync_api import expect

    target = page.locator(f"#edit-turns [data-testid='cell-{row}-{col}']")
    target.dblclick()
    editor = target.locator("textarea, input").first
    expect(editor).to_be_focused()
    page.keyboard.type(text)
    expect(editor).to_have_value(text)  # not appended to the previous row's text
    page.keyboard.press("Enter")


def test_a_csv_of_text_and_response_columns_gets_them_as_its_first_guess(app_url, page, tmp_path):
    from playwright.sync_api import expect

    message = opened(page, app_url)
    path = tmp_path / "pairs.csv"
    path.write_text("id,text,response\n1,Where is my parcel?,On its way.\n2,Can I pay by card?,Yes.\n"
                    "3,Do you ship abroad?,To most countries.\n", encoding="utf-8")
    page.locator("#dataset-upload input[type=file]").set_input_files(str(path))
    expect(message).to_contain_text("match no known shape")
    expect(page.locator("#import-shape input")).to_have_value("custom mapping")
    expect(page.locator("#map-user input")).to_have_value("text")
    expect(page.locator("#map-assistant input")).to_have_value("response")
    expect(message).to_contain_text("A first guess is filled in under Import settings: text → user turn, "
                                    "response → assistant reply")
    page.locator("#import-again").click()
    expect(message).to_contain_text("3 rows imported from pairs.csv (column mapping)")
    rows = tdata.load_jsonl(tmp_path / "home" / "datasets" / "pairs.jsonl").rows
    assert rows[0]["messages"][0]["content"] == "Where is my parcel?" and rows[0]["id"] == "1"


def upload_plants(page, app_url, tmp_path):
    """The page with 8 original rows imported as `plants`; its message line."""
    from playwright.sync_api import expect

    message = opened(page, app_url)
    path = tmp_path / "plants.jsonl"
    path.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"How do I water plant number {i} in winter?"},
        {"role": "assistant", "content": "Less often than in summer."}]}) + "\n" for i in range(8)), encoding="utf-8")
    page.locator("#dataset-upload input[type=file]").set_input_files(str(path))
    expect(message).to_contain_text("8 rows imported")
    page.get_by_role("tab", name="Expand").click()
    page.locator("#expand-max-new input[type=number]").fill("16")
    return message


def propose(page, n: int):
    page.locator("#expand-n input").fill(str(n))
    page.locator("#expand-propose").click()


def ticks(page):
    return [page.locator(f"#expand-proposals [data-testid='cell-{r}-0'] [data-testid='checkbox']") for r in range(8)]


def test_expand_says_why_it_made_fewer_and_leaves_off_topic_proposals_unticked(app_url, page, tmp_path):
    from playwright.sync_api import expect

    message = upload_plants(page, app_url, tmp_path)
    propose(page, 16)
    expand_msg = page.locator("#expand-message")
    expect(expand_msg).to_contain_text(re.compile(r"8 proposal(s|\(s\))? from"), timeout=60_000)
    expect(expand_msg).to_contain_text("you asked for 16, but the draft has only 8 original row(s)")
    # the tiny random model's words share none with the originals: none counts as usable
    expect(expand_msg).to_contain_text("0 look usable")
    expect(expand_msg).to_contain_text("not ticked: 8 drifting off-topic")
    expect(page.locator("#expand-proposals")).to_contain_text("⚠️ drifting off-topic")
    for box in ticks(page):
        expect(box).not_to_be_checked()
    page.locator("#expand-add").click()
    expect(message).to_contain_text("Tick at least one")


def test_expand_adds_a_batch_once_never_paraphrases_a_paraphrase_and_saves_a_count(app_url, page, tmp_path):
    from playwright.sync_api import expect

    message = upload_plants(page, app_url, tmp_path)
    propose(page, 8)
    expand_msg = page.locator("#expand-message")
    expect(expand_msg).to_contain_text(re.compile(r"8 proposal(s|\(s\))? from"), timeout=60_000)

    # three ticked by hand are added; a second click adds nothing and says so
    for box in ticks(page)[:3]:
        expect(box).not_to_be_checked()  # flagged: the tiny model's words are no rewording
        box.click()
        expect(box).to_be_checked()
    page.locator("#expand-add").click()
    expect(message).to_contain_text("3 paraphrase(s) added to the draft")
    page.locator("#expand-add").click()
    expect(message).to_contain_text("Nothing added: the 3 ticked paraphrase(s) are already added")
    table = page.locator("#dataset-table")
    expect(table.locator("[data-testid='cell-10-1']")).to_be_attached()
    expect(table.locator("[data-testid='cell-11-1']")).not_to_be_attached()

    # a new message line first, so that the next Add's answer is told apart
    page.get_by_role("tab", name="Edit rows").click()
    page.locator("#edit-clear").click()
    page.locator("#edit-add").click()
    expect(message).to_contain_text("Not saved")
    page.get_by_role("tab", name="Expand").click()

    # a second round: only the 8 original rows are sources; Add meanwhile adds the old batch not again
    propose(page, 16)
    add = page.locator("#expand-add")
    if add.is_disabled():  # Add is off while the proposals are made: the old batch cannot go in again
        expect(message).to_contain_text("Not saved")
    else:  # the tiny model may already be done, or the click lands as the proposals are being made
        # (or on the button just turned off for them: then nothing happens and the line stays)
        add.click()
        expect(message).to_contain_text(re.compile("are being made|already added|Tick at least one|Not saved"))
    expect(expand_msg).to_contain_text("its 3 added paraphrase(s) are not paraphrased again", timeout=60_000)
    expect(expand_msg).to_contain_text("8 proposal(s) from")
    proposals = page.locator("#expand-proposals")
    numbers = [int(proposals.locator(f"[data-testid='cell-{r}-1']").inner_text()) for r in range(8)]
    assert sorted(numbers) == list(range(1, 9))
    expect(table.locator("[data-testid='cell-11-1']")).not_to_be_attached()

    # Expand's own save; the version note counts the paraphrases
    page.locator("#expand-save").click()
    expect(message).to_contain_text("11 rows in the draft, saved as plants-v2.jsonl")
    expect(page.locator("#dataset-versions")).to_contain_text("3 paraphrases added")
    rows = tdata.load_jsonl(tmp_path / "home" / "datasets" / "plants-v2.jsonl").rows
    assert sum(r.get("origin") == "paraphrase" for r in rows) == 3
    assert len({json.dumps(r["messages"]) for r in rows}) == 11


def test_the_row_editor_is_empty_after_add_as_a_new_row(app_url, page):
    from playwright.sync_api import expect

    message = opened(page, app_url)
    edit_cell(page, 0, 0, "First question")
    edit_cell(page, 0, 1, "First answer")
    page.locator("#edit-add").click()
    expect(message).to_contain_text("Row 27 added")
    expect(page.locator("#edit-turns [data-testid='cell-0-0']")).not_to_contain_text("First question")
    expect(page.locator("#edit-turns [data-testid='cell-0-1']")).not_to_contain_text("First answer")
    expect(page.locator("#edit-row input")).to_have_value("0")
    expect(message).to_contain_text("the editor is cleared for the next one")
    # the next row is typed afresh (edit_cell checks the cell holds only what was typed)
    edit_cell(page, 0, 0, "Second question")
    edit_cell(page, 0, 1, "Second answer")
    page.locator("#edit-add").click()
    expect(message).to_contain_text("Row 28 added")
    box = page.locator("#edit-row input")
    box.fill("28")
    box.press("Enter")
    expect(page.locator("#edit-check")).to_contain_text("Editing row 28")
    expect(page.locator("#edit-turns [data-testid='cell-0-0']")).to_have_text("Second question")
    expect(page.locator("#edit-turns [data-testid='cell-0-1']")).to_have_text("Second answer")


def delete_row_1(page, message):
    from playwright.sync_api import expect

    page.locator("#edit-row input").fill("1")
    page.locator("#edit-delete").click()
    expect(message).to_contain_text("Row 1 deleted")


def kept(page, message, label: str, first: str):
    """The draft with 1 unsaved change to `label` is kept, its first user turn no longer `first`."""
    from playwright.sync_api import expect

    expect(message).to_contain_text(f"The draft has 1 unsaved change(s) to {label}, so it is kept")
    expect(page.locator("#dataset-chooser input")).to_have_value(label)
    expect(page.locator("#dataset-versions")).to_contain_text("1 unsaved change(s)")
    expect(page.locator("#dataset-table [data-testid='cell-0-1']")).not_to_have_text(first)


def dropped(page, message, button: str, done: str):
    """The discard button, reading "Drop the unsaved changes and `button`", does it: the message
    says `done` and the button is gone."""
    from playwright.sync_api import expect

    discard = page.locator("#dataset-discard")
    expect(discard).to_have_text(f"Drop the unsaved changes and {button}")
    discard.click()
    expect(message).to_contain_text(done)
    expect(discard).to_be_hidden()


def test_unsaved_changes_are_kept_when_another_version_is_picked(app_url, page):
    from playwright.sync_api import expect

    message = opened(page, app_url)
    chooser = page.locator("#dataset-chooser input")
    expect(chooser).to_have_value("starter: polite_assistant")
    first = page.locator("#dataset-table [data-testid='cell-0-1']").inner_text()
    delete_row_1(page, message)

    # another version picked: the draft stays, with a warning and a way to drop it
    pick(page, "dataset-chooser", "starter: company_faq")
    kept(page, message, "starter: polite_assistant", first)
    dropped(page, message, "open starter: company_faq", "rows in company_faq.jsonl")
    expect(chooser).to_have_value("starter: company_faq")

    # so is "Start a new, empty dataset" with unsaved changes
    delete_row_1(page, message)
    page.locator("#dataset-new").click()
    expect(message).to_contain_text("The draft has 1 unsaved change(s) to starter: company_faq, so it is kept")
    dropped(page, message, "start a new, empty dataset", "A new, empty dataset")


def test_unsaved_changes_are_kept_when_a_file_is_imported(app_url, page, tmp_path):
    from playwright.sync_api import expect

    message = opened(page, app_url)
    first = page.locator("#dataset-table [data-testid='cell-0-1']").inner_text()
    delete_row_1(page, message)

    # a file uploaded: nothing is imported, the draft stays, with a way to drop it and import
    path = tmp_path / "plants.jsonl"
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"How often do I water cactus {i}?"},
                                                     {"role": "assistant", "content": "Rarely."}]}) + "\n"
                            for i in range(2)), encoding="utf-8")
    page.locator("#dataset-upload input[type=file]").set_input_files(str(path))
    kept(page, message, "starter: polite_assistant", first)
    saved = tmp_path / "home" / "datasets"
    assert not (saved / "plants.jsonl").exists()
    dropped(page, message, "import plants.jsonl", "2 rows imported from plants.jsonl")
    expect(page.locator("#dataset-chooser input")).to_have_value("saved: plants")
    assert len(tdata.load_jsonl(saved / "plants.jsonl").rows) == 2

    # so is a starter file imported with unsaved changes, after another refusal (its button is replaced)
    first = page.locator("#dataset-table [data-testid='cell-0-1']").inner_text()
    delete_row_1(page, message)
    page.locator("#dataset-new").click()
    expect(page.locator("#dataset-discard")).to_have_text("Drop the unsaved changes and start a new, empty dataset")
    page.get_by_text("Import settings").click()
    pick(page, "starter-file", "customer_support.csv")
    page.locator("#import-starter").click()
    kept(page, message, "saved: plants", first)
    assert not (saved / "customer_support.jsonl").exists()
    dropped(page, message, "import customer_support.csv", "match no known shape")
    # its columns want a mapping: nothing was imported, so the draft is still kept; so is it on re-import
    expect(page.locator("#dataset-versions")).to_contain_text("1 unsaved change(s)")
    page.locator("#import-again").click()
    kept(page, message, "saved: plants", first)
    assert not (saved / "customer_support.jsonl").exists()
    dropped(page, message, "import customer_support.csv", "rows imported from customer_support.csv (column mapping)")
    assert (saved / "customer_support.jsonl").exists()
