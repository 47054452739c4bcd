"""The Train tab's overlay of chosen runs, in a real browser: it draws every run picked
(not only the first), with legend labels that differ and are not cut, in a plot of real
width (not a blank box with its legend and points squeezed into a plot of zero width)."""

from __future__ import annotations

import pytest

from browser import assert_chart_drawn, home_with_runs, pick as _pick, serve


@pytest.mark.server
def test_the_overlay_draws_every_chosen_run_with_labels_that_differ(tiny_llama, tmp_path, page):
    from playwright.sync_api import expect


    home = home_with_runs(tmp_path, tiny_llama, ["alpha one", "beta two"])
    demo, url = serve(home, tiny_llama, seed=1)
    try:
        page.goto(url)
        page.get_by_role("tab", name="Train").click()
        expect(page.locator("#runs-table")).to_contain_text("beta two")
        _pick(page, "runs-picked", "alpha-one")
        overlay = page.locator("#runs-overlay")
        expect(overlay).to_contain_text("alpha one: training loss")
        assert_chart_drawn(overlay)
        _pick(page, "runs-picked", "beta-two")
        page.keyboard.press("Escape")
        expect(overlay).to_contain_text("beta two: training loss")
        expect(overlay).to_contain_text("alpha one: training loss")
        # both lines are drawn: 3 logged steps each
        expect(page.locator('#runs-overlay [aria-roledescription="point"]')).to_have_count(6)
        drawn = assert_chart_drawn(overlay)
        assert drawn["width"] > 600, drawn  # the row is the page's width: the chart uses it
    finally:
        demo.close()


def test_the_live_charts_are_drawn_and_throw_nothing_across_runs_and_tabs(app_url, page):
    """A LinePlot hidden and shown again (another tab) kept a resize observer
    for each time, and once emptied for the next run they threw "Cannot read properties
    of null (reading 'offsetWidth')"; the page fixture fails the test on such an error."""
    from playwright.sync_api import expect

    page.goto(app_url)
    page.get_by_role("tab", name="Train").click()
    # far more steps than the test waits for, so it never races the run (twenty epochs of the
    # starter set took 13 s on this machine: a run ended before Stop)
    steps = page.get_by_label("Max steps (-1: use epochs)")
    steps.fill("20000")
    steps.press("Tab")
    progress = page.locator("#train-progress")
    for _run in range(2):
        page.locator("#train-start").click()
        expect(page.locator("#train-message")).to_contain_text("Started run")
        expect(progress).to_contain_text("running")
        for chart in ("#loss-chart", "#lr-chart"):
            assert_chart_drawn(page.locator(chart))
        # the charts go on filling while another tab is shown
        for tab in ("Results", "Train", "Compare", "Train"):
            page.get_by_role("tab", name=tab).click()
            page.wait_for_timeout(2_000)
        for chart in ("#loss-chart", "#lr-chart"):
            assert_chart_drawn(page.locator(chart))
        expect(page.locator("#loss-chart")).to_contain_text("training loss")
        page.locator("#train-stop").click()
        expect(progress).to_contain_text("stopped", timeout=60_000)
