"""The Dataset tab as a person sees it across a reload and a fresh start:
the picker keeps the version chosen, and a new, empty dataset starts with an empty
row editor, not the previous dataset's row marked Ready."""

from __future__ import annotations

import re

from browser import opened, pick


def test_the_picked_dataset_is_still_picked_after_a_reload(app_url, page):
    from playwright.sync_api import expect

    message = opened(page, app_url)
    pick(page, "dataset-chooser", "starter: formal_email")
    expect(message).to_contain_text("72 rows in formal_email.jsonl")
    page.reload()
    expect(page.locator("#dataset-chooser input")).to_have_value("starter: formal_email")
    expect(message).to_contain_text("72 rows in formal_email.jsonl")
    # a saved version is remembered the same way
    page.locator("#dataset-save").click()
    expect(message).to_contain_text("saved as formal_email.jsonl (saved: formal_email)")
    expect(page.locator("#dataset-chooser input")).to_have_value("saved: formal_email")
    page.reload()
    expect(page.locator("#dataset-chooser input")).to_have_value("saved: formal_email")
    expect(message).to_contain_text("72 rows in formal_email.jsonl (saved: formal_email)")


def test_a_new_empty_dataset_starts_with_an_empty_row_editor(app_url, page):
    from playwright.sync_api import expect

    message = opened(page, app_url)
    page.get_by_role("tab", name="Edit rows").click()
    first_user = page.locator("#dataset-table [data-testid='cell-0-1']")
    first_user.click()
    expect(page.locator("#edit-row input")).to_have_value("1")
    page.locator("#edit-system textarea, #edit-system input").first.fill("Be polite.")
    expect(page.locator("#edit-check")).to_contain_text("Ready")

    page.locator("#dataset-new").click()
    expect(message).to_contain_text("A new, empty dataset")
    expect(page.locator("#edit-row input")).to_have_value("0")
    expect(page.locator("#edit-system textarea, #edit-system input").first).to_have_value("")
    expect(page.locator("#edit-turns [data-testid='cell-0-0']")).to_have_text("")
    expect(page.locator("#edit-turns [data-testid='cell-0-1']")).to_have_text("")
    expect(page.locator("#edit-check")).not_to_contain_text("Ready")
    # so Add has nothing to add: the previous dataset's row does not become the new one's first
    page.locator("#edit-add").click()
    expect(message).to_contain_text("Not saved: add a turn")

    # the same after dropping unsaved changes to start a new, empty dataset
    pick(page, "dataset-chooser", "starter: polite_assistant")
    expect(message).to_contain_text("26 rows")
    first_user.click()
    expect(page.locator("#edit-row input")).to_have_value("1")
    page.locator("#edit-delete").click()
    expect(message).to_contain_text("Row 1 deleted")
    first_user.click()
    expect(page.locator("#edit-row input")).to_have_value("1")
    expect(page.locator("#edit-check")).to_contain_text(re.compile("Editing row 1|Ready"))
    page.locator("#dataset-new").click()
    expect(message).to_contain_text("1 unsaved change")
    page.locator("#dataset-discard").click()
    expect(message).to_contain_text("A new, empty dataset")
    expect(page.locator("#edit-row input")).to_have_value("0")
    expect(page.locator("#edit-turns [data-testid='cell-0-0']")).to_have_text("")
    expect(page.locator("#edit-check")).not_to_contain_text("Ready")
    expect(page.locator("#edit-check")).not_to_contain_text("Editing")
