"""The Train tab's overlay of chosen runs, in a real browser (issue 14: it drew only the
first run picked, and its legend showed two identical, cut labels)."""

from __future__ import annotations

from browser import pick as _pick, serve
from conftest import chat, write_jsonl


def test_the_overlay_draws_every_chosen_run_with_labels_that_differ(tiny_llama, tmp_path, page):
    from playwright.sync_api import expect

    from tuner.config import TrainConfig
    from tuner.paths import Layout
    from tuner.runs import RunManager

    home = tmp_path / "home"
    layout = Layout(home)
    data = write_jsonl(tmp_path / "d.jsonl", [chat(f"Say hi {i}", "Hello there!") for i in range(6)])
    manager = RunManager(layout.runs, layout.models)
    for name in ("alpha one", "beta two"):
        manager.start(TrainConfig(base_model=str(tiny_llama), dataset=str(data), run_name=name, max_steps=3,
                                  test_fraction=0, validation_fraction=0))
        assert manager.wait(120).status == "completed"
    demo, url = serve(home, tiny_llama, seed=1)
    try:
        page.goto(url)
        page.get_by_role("tab", name="Train").click()
        expect(page.locator("#runs-table")).to_contain_text("beta two")
        _pick(page, "runs-picked", "alpha-one")
        overlay = page.locator("#runs-overlay")
        expect(overlay).to_contain_text("alpha one: training loss")
        _pick(page, "runs-picked", "beta-two")
        page.keyboard.press("Escape")
        expect(overlay).to_contain_text("beta two: training loss")
        expect(overlay).to_contain_text("alpha one: training loss")
        # both lines are drawn: 3 logged steps each
        expect(page.locator('#runs-overlay [aria-roledescription="point"]')).to_have_count(6)
    finally:
        demo.close()
