"""The Playground in a real browser: each reply is streamed, its text growing word by
word (not both whole replies shown at once, after waiting for both)."""

from __future__ import annotations

import re

import pytest

from browser import home_with_runs, serve

# Every text the left chat's last reply shows, in order, as the page draws them: a
# MutationObserver sees each change the page makes, however briefly it lasts.
WATCH_REPLY = """() => {
    window.seenReplies = [];
    const chat = document.querySelector('#play-chat-left');
    const note = () => {
        const bots = chat.querySelectorAll('[data-testid="bot"]');
        const text = bots.length ? bots[bots.length - 1].innerText.trim() : '';
        const seen = window.seenReplies;
        if (text && seen[seen.length - 1] !== text) seen.push(text);
    };
    new MutationObserver(note).observe(chat, {subtree: true, childList: true, characterData: true});
}"""


@pytest.mark.server
def test_the_playground_streams_each_reply_as_it_is_written(tiny_llama, tmp_path, page):
    from playwright.sync_api import expect


    # a run on the tiny model, so that the Playground's base is the tiny model too
    home = home_with_runs(tmp_path, tiny_llama, ["tuned"], max_steps=2)
    demo, url = serve(home, tiny_llama, seed=1)
    try:
        page.goto(url)
        page.get_by_role("tab", name="Playground").click()
        expect(page.locator("#play-right input")).to_have_value(re.compile("tuned"))
        # the most new tokens: a reply long enough to be seen growing
        page.locator("#play-max-new input[type=number]").fill("512")
        page.locator("#play-max-new input[type=number]").press("Enter")
        page.evaluate(WATCH_REPLY)
        page.locator("#play-message textarea").fill("Tell me about the sea.")
        page.locator("#play-send").click()
        expect(page.locator("#play-note")).to_contain_text("Both replies use greedy decoding", timeout=120_000)
        seen = page.evaluate("window.seenReplies")
        final = page.locator('#play-chat-left [data-testid="bot"]').last.inner_text().strip()
        assert len(seen) >= 2 and seen[-1] == final, seen  # text appeared, then grew
        assert all(len(a) < len(b) and b.startswith(a) for a, b in zip(seen, seen[1:])), seen
        expect(page.locator('#play-chat-right [data-testid="bot"]')).to_have_count(1)
        expect(page.locator('#play-chat-right [data-testid="user"]')).to_contain_text("Tell me about the sea.")
    finally:
        demo.close()


def test_opening_the_playground_loads_its_model_ahead(tiny_llama, tmp_path):
    """The first Send once waited for the model to load before any text showed."""
    from tuner.generate import Generator
    from tuner.ui.playground import _load_ahead

    generator = Generator(tmp_path)
    _load_ahead(generator, str(tiny_llama)).join(120)
    assert generator.model_name == str(tiny_llama) and generator.model is not None
    assert _load_ahead(generator, str(tiny_llama)) is None  # loaded already: nothing to do
