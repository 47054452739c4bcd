"""Compare's prompt upload says what it read before Generate (issue 14: no preview, no count)."""

from __future__ import annotations


def test_an_uploaded_prompt_file_is_counted_and_previewed(app_url, page, tmp_path):
    from playwright.sync_api import expect

    good = tmp_path / "prompts.csv"
    good.write_text("prompt,reference,category\nWhere is the office?,Tampere,company\n"
                    "When do you open?,9:00,support\nHow much is shipping?,,shipping\n", encoding="utf-8")
    bad = tmp_path / "bad.csv"
    bad.write_text("question,answer\nWhere?,Here\n", encoding="utf-8")
    page.goto(app_url)
    page.get_by_role("tab", name="Compare").click()
    page.get_by_label("uploaded file").check()
    page.locator("#eval-upload input[type=file]").set_input_files(str(good))
    note = page.locator("#eval-upload-note")
    expect(note).to_contain_text("3 prompts")
    expect(note).to_contain_text("2 with a reference answer")
    expect(note).to_contain_text("Where is the office?")
    page.locator("#eval-upload button[aria-label='Clear']").first.click()
    page.locator("#eval-upload input[type=file]").set_input_files(str(bad))
    expect(note).to_contain_text("⚠️")
    expect(note).to_contain_text("bad.csv")
