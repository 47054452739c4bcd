"""Make the README's screenshots from a real round on the bundled model.

    .venv/bin/python docs/screenshots.py            # ~4 min on two CPU cores

A fresh data root; the polite_assistant starter trained with its recommended settings
(LoRA r16, 8 epochs); Compare on the run's held-out prompts; two scripted raters, one
on the Compare tab (reveal after each pair) and one on /rate; then the Compare tab
(docs/screenshot.png) and the Results tab (docs/results.png). The app is built and served
as app.py serves it (build_app, then uvicorn in a thread); with TUNER_OWNER_PASSWORD set,
the owner signs in on its sign-in page first. The scripted raters
score a reply 4 when it is short (60 words at most) and never says "As an AI", else 2: the
figures in the screenshots are real replies, not real people's judgements.
"""

from __future__ import annotations

import random
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from browser import CHROMIUM, LAUNCH_ARGS, free_port, pick  # noqa: E402

def _score(reply: str) -> str:
    """The scripted rater: short, polite replies without 'As an AI' score 4, others 2."""
    words = len(reply.split())
    return "4" if words <= 60 and "as an ai" not in reply.lower() else "2"


def _rate_all(page, prefix: str, shot: Path | None = None) -> None:
    from playwright.sync_api import expect

    while True:
        progress = page.locator(f"#{prefix}-progress").inner_text()
        match = re.search(r"pair (\d+) of (\d+)", progress)
        if not match:
            return
        for side in ("a", "b"):
            reply = page.locator(f"#{prefix}-reply-{side} textarea").input_value()
            page.locator(f"#{prefix}-score-{side}").get_by_label(_score(reply), exact=True).check()
        page.locator(f"#{prefix}-submit").click()
        expect(page.locator(f"#{prefix}-reveal")).to_contain_text("Saved")
        if shot is not None and match.group(1) == "1":  # the rating panel, from its heading to Next pair
            top = page.get_by_text("2. Rate blind").bounding_box()["y"] + page.evaluate("window.scrollY") - 16
            bottom = (page.locator(f"#{prefix}-next").bounding_box()["y"] + page.evaluate("window.scrollY") + 64)
            page.screenshot(path=str(shot), full_page=True,
                            clip={"x": 0, "y": top, "width": 1280, "height": bottom - top})
        if match.group(1) == match.group(2):
            return
        page.locator(f"#{prefix}-next").click()
        expect(page.locator(f"#{prefix}-progress")).to_contain_text(f"pair {int(match.group(1)) + 1} of")


def main() -> None:
    from playwright.sync_api import expect, sync_playwright

    from app import build_app
    from tuner import models
    from tuner.access import Access

    t0 = time.time()

    def mark(label):
        print(f"[{time.time() - t0:6.1f}s] {label}", flush=True)

    home = Path(tempfile.mkdtemp(prefix="tuner-shots-"))
    access = Access.from_env()  # as app.py: open mode unless TUNER_OWNER_PASSWORD / TUNER_OWNER is set
    tuner = build_app(home, default_model=models.BUNDLED, rng=random.Random(3), access=access)
    url = tuner.start("127.0.0.1", free_port())
    expect.set_options(timeout=60_000)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 1400})
            page.set_default_timeout(60_000)
            page.goto(url)
            if access.password:  # a stranger's browser lands on the sign-in page: sign in as the owner
                expect(page).to_have_url(f"{url}/tuner/sign-in")
                page.locator("#password").fill(access.password)
                page.locator("#sign-in-button").click()
                expect(page).to_have_url(f"{url}/")
                expect(page.locator("#owner-status")).to_contain_text("Signed in as the owner")
            elif not access.open:
                raise SystemExit("TUNER_OWNER (Hugging Face sign-in) needs a Space: unset it, or set "
                                 "TUNER_OWNER_PASSWORD, to make the screenshots.")
            expect(page.locator("#dataset-message")).to_contain_text("26 rows")
            page.get_by_role("tab", name="Train").click()
            page.locator("#train-recipe-use").click()
            expect(page.get_by_label("number input for Epochs")).to_have_value("8")
            page.locator("#train-run-name input, #train-run-name textarea").first.fill("polite r16")
            page.locator("#train-start").click()
            expect(page.locator("#train-progress")).to_contain_text("completed", timeout=900_000)
            mark("trained")

            page.get_by_role("tab", name="Compare").click()
            page.locator("#eval-name input, #eval-name textarea").first.fill("polite, held out")
            pick(page, "compare-run", "polite r16")
            page.keyboard.press("Escape")
            expect(page.locator("#eval-recipe-note")).to_contain_text("polite_assistant")
            page.get_by_text("Generation settings, keyword rules, invite code").click()
            page.locator("#eval-invite input, #eval-invite textarea").first.fill("tea")
            page.locator("#eval-reveal").get_by_label("after each pair").check()
            page.locator("#generate").click()
            expect(page.locator("#generate-message")).to_contain_text("Generated", timeout=900_000)
            mark("generated")
            if page.locator("#cut-open").is_visible():  # a reply or two reach the recipe's cap
                page.locator("#cut-open").click()
            expect(page.locator("#generate-message")).to_contain_text("Raters need the invite code")
            page.locator("#rate-name input, #rate-name textarea").first.fill("Ana")
            page.locator("#rate-start").click()
            expect(page.locator("#rate-progress")).to_contain_text("pair 1 of")
            _rate_all(page, "rate", ROOT / "docs" / "screenshot.png")

            friend = browser.new_page(viewport={"width": 1280, "height": 1300})
            friend.set_default_timeout(60_000)
            friend.goto(f"{url}/rate")  # the raters' link: redirected to the raters' page at /rate/
            expect(friend).to_have_url(f"{url}/rate/")
            friend.locator("#rater-eval input").click()
            friend.get_by_role("option", name=re.compile("polite, held out")).click()
            friend.locator("#rater-name input, #rater-name textarea").first.fill("Ben")
            friend.locator("#rater-code input, #rater-code textarea").first.fill("tea")
            friend.locator("#rater-start").click()
            expect(friend.locator("#rater-progress")).to_contain_text("pair 1 of")
            _rate_all(friend, "rater")
            mark("rated")

            page.get_by_role("tab", name="Results").click()
            page.locator("#results-refresh").click()
            expect(page.locator("#success-table")).to_contain_text("polite r16")
            page.locator("#results-distribution").wait_for()
            page.wait_for_timeout(2_000)
            page.set_viewport_size({"width": 1280, "height": 1560})
            page.wait_for_timeout(1_000)
            page.screenshot(path=str(ROOT / "docs" / "results.png"))
            mark("done")
            browser.close()
    finally:
        tuner.close()


if __name__ == "__main__":
    main()
