"""The owner's uploads are removed after use, in a real browser: a Compare
prompt file is read once and deleted, yet Generate still uses its prompts; a dataset
upload stays only while it can be imported again, and goes when the next one comes or
it is cleared."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest
from browser import opened, pick as _pick, serve
from helpers import mark_users


def in_upload_folder(name: str) -> list[Path]:
    from gradio.utils import get_upload_folder  # the app runs in this process

    return list(Path(get_upload_folder()).rglob(name))


@pytest.fixture
@mark_users("server")
def app_with_run(tiny_llama, trained_run, tmp_path):
    """The app over a data root that already holds a finished run of the tiny Llama."""
    home = tmp_path / "home"
    shutil.copytree(trained_run.parent, home / "runs" / trained_run.parent.name)
    demo, url = serve(home, tiny_llama, seed=5)
    yield url, trained_run.parent.name
    demo.close()


def test_a_compare_prompt_file_is_deleted_once_read_and_generate_uses_its_prompts(app_with_run, page,
                                                                                  tmp_path):
    from playwright.sync_api import expect

    url, run_id = app_with_run
    name = f"prompts-{uuid.uuid4().hex[:8]}.csv"
    prompts = tmp_path / name
    prompts.write_text("prompt\nSay hi 1\nSay hi 2\n", encoding="utf-8")
    page.goto(url)
    page.get_by_role("tab", name="Compare").click()
    _pick(page, "compare-run", run_id)
    page.keyboard.press("Escape")
    page.get_by_label("uploaded file").check()
    page.locator("#eval-upload input[type=file]").set_input_files(str(prompts))
    expect(page.locator("#eval-upload-note")).to_contain_text("2 prompts")
    assert in_upload_folder(name) == []  # read once, then deleted
    page.locator("#generate").click()
    expect(page.locator("#generate-message")).to_contain_text("Generated 2 × 2 replies", timeout=120_000)


def test_a_dataset_upload_stays_until_the_next_one_or_a_clear(app_with_run, page, tmp_path):
    from playwright.sync_api import expect

    url, _ = app_with_run
    message = opened(page, url)
    first, second = (f"{tag}-{uuid.uuid4().hex[:8]}.csv" for tag in ("first", "second"))
    for name in (first, second):
        (tmp_path / name).write_text("id,text,response\n1,Where is my parcel?,On its way.\n"
                                     "2,Can I pay by card?,Yes.\n", encoding="utf-8")
    upload = page.locator("#dataset-upload input[type=file]")
    upload.set_input_files(str(tmp_path / first))
    expect(message).to_contain_text("A first guess is filled in")
    assert len(in_upload_folder(first)) == 1  # kept: it can be imported again with other settings
    page.locator("#dataset-upload button[aria-label='Clear']").first.click()
    upload.set_input_files(str(tmp_path / second))
    expect(message).to_contain_text(second.removesuffix(".csv"))
    assert in_upload_folder(first) == []
    page.locator("#import-again").click()
    expect(message).to_contain_text(f"2 rows imported from {second}")
    assert len(in_upload_folder(second)) == 1
    page.locator("#dataset-upload button[aria-label='Clear']").first.click()
    for _ in range(100):
        if not in_upload_folder(second):
            break
        page.wait_for_timeout(100)
    assert in_upload_folder(second) == []
