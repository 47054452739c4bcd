"""The owner's sign-in in a real browser. A stranger opening the studio lands on the
sign-in page (Owner only, no tab of the studio); a wrong password is told so; the
password sets the cookie and opens the studio; Sign out returns to the sign-in page and
the studio is refused again; the raters' page stays open to anyone."""

from __future__ import annotations

import pytest

from browser import ARTIFACTS, free_port, serve
from helpers import mark_users

PASSWORD = "s3cret owner words"
TABS = ["Dataset", "Train", "Compare", "Playground", "Results", "Leaderboard", "Export"]
SIGN_IN = "/tuner/sign-in"


@pytest.fixture
@mark_users("server")
def locked_url(tiny_llama, tmp_path):
    from tuner.access import Access

    tuner, url = serve(tmp_path / "home", tiny_llama, Access(password=PASSWORD))
    yield url
    tuner.close()


def on_sign_in_page(page, url: str) -> None:
    """What a stranger sees: the sign-in page, Owner only, and nothing of the studio."""
    from playwright.sync_api import expect

    expect(page).to_have_url(f"{url}{SIGN_IN}")
    expect(page.get_by_text("Owner only.")).to_be_visible()
    expect(page.locator("#password")).to_be_visible()
    expect(page.locator("#sign-in-button")).to_have_text("Sign in as owner")
    expect(page.get_by_role("link", name="/rate")).to_be_visible()
    for tab in TABS:
        expect(page.get_by_role("tab", name=tab, exact=True)).to_have_count(0)
    for studio in ("#owner-status", "#owner-sign-out", "#open-banner", "#train-stop", "#owner-sessions-panel"):
        expect(page.locator(studio)).to_have_count(0)
    expect(page.get_by_text("Signed in as the owner")).to_have_count(0)


def studio_answer(page, path: str) -> int:
    """The status this browser (its cookies) gets from a studio route, fetched from its page."""
    return page.evaluate("async (path) => (await fetch(path, {credentials: 'same-origin'})).status", path)


def test_owner_signs_in_with_the_password(locked_url, chromium):
    from playwright.sync_api import expect

    page = chromium.new_page()
    page.goto(locked_url)
    on_sign_in_page(page, locked_url)
    assert "tuner_owner" not in {c["name"] for c in page.context.cookies()}
    for route in ("/config", "/gradio_api/info", "/gradio_api/file=/etc/passwd"):
        assert studio_answer(page, route) == 401, route
    page.screenshot(path=str(ARTIFACTS / "owner-locked.png"))

    password = page.locator("#password")
    message = page.locator("#message")
    password.fill("wrong guess")
    page.locator("#sign-in-button").click()
    expect(message).to_contain_text("That is not the owner password")
    expect(message).to_be_visible()
    on_sign_in_page(page, locked_url)  # still locked out
    assert "tuner_owner" not in {c["name"] for c in page.context.cookies()}

    password.fill(PASSWORD)
    page.locator("#sign-in-button").click()
    expect(page).to_have_url(f"{locked_url}/", timeout=30_000)
    status = page.locator("#owner-status")
    expect(status).to_contain_text("Signed in as the owner", timeout=30_000)
    expect(status).to_be_visible()
    for tab in TABS:
        expect(page.get_by_role("tab", name=tab, exact=True)).to_be_visible()
    expect(page.locator("#owner-sign-out")).to_be_visible()
    expect(page.locator("#owner-sign-out")).to_have_text("Sign out")
    expect(page.locator("#owner-sessions-panel")).to_contain_text("Signed-in browsers")
    expect(page.locator("#open-banner")).to_have_count(0)
    expect(page.get_by_text("Owner only")).to_have_count(0)
    cookies = {c["name"]: c for c in page.context.cookies()}
    session = cookies["tuner_owner"]
    assert len(session["value"]) >= 43 and session["httpOnly"] and session["sameSite"] == "Strict"
    assert page.evaluate("document.cookie").find("tuner_owner=") == -1  # no script on the page can read it
    assert not cookies["tuner_csrf"]["httpOnly"]  # the page's own anti-forgery token, sent as a header
    assert studio_answer(page, "/config") == 200
    # a button of the studio reaches its handler: it answers about the run, not about rights
    page.get_by_role("tab", name="Train").click()
    page.locator("#train-stop").click()
    expect(page.locator("#train-message")).to_contain_text("No run is in progress", timeout=30_000)
    expect(page.get_by_text("Owner only")).to_have_count(0)
    # the signed-in browsers: this one, marked as this browser
    page.locator("#owner-sessions-panel").get_by_text("Signed-in browsers").click()
    page.locator("#owner-sessions-show").click()
    expect(page.locator("#owner-sessions-note")).to_contain_text("1 signed-in browser(s).")
    expect(page.locator("#owner-sessions")).to_contain_text("✓")
    page.screenshot(path=str(ARTIFACTS / "owner-signed-in.png"))
    # the sign-in page, opened while signed in, goes to the studio
    page.goto(f"{locked_url}{SIGN_IN}")
    expect(page).to_have_url(f"{locked_url}/")
    expect(status).to_contain_text("Signed in as the owner", timeout=30_000)

    page.locator("#owner-sign-out").click()
    on_sign_in_page(page, locked_url)
    assert not {"tuner_owner", "tuner_csrf"} & {c["name"] for c in page.context.cookies()}
    assert studio_answer(page, "/config") == 401
    page.goto(locked_url)  # the studio is refused again
    on_sign_in_page(page, locked_url)
    # the session is revoked on the server too: the old cookie, replayed, is a stranger's
    page.context.add_cookies([{**session, "sameSite": "Strict"}, {**cookies["tuner_csrf"], "sameSite": "Strict"}])
    page.goto(locked_url)
    on_sign_in_page(page, locked_url)
    assert studio_answer(page, "/config") == 401


def test_a_stranger_sees_the_sign_in_page_and_can_still_rate(locked_url, chromium):
    from playwright.sync_api import expect

    page = chromium.new_page()
    for path in ("/", "/?view=api", "/config", "/gradio_api/info"):  # a browser asking for a page
        page.goto(f"{locked_url}{path}")
        on_sign_in_page(page, locked_url)
    # the raters' link, as friends get it: the rating page, with no studio in it
    page.get_by_role("link", name="/rate").click()
    expect(page).to_have_url(f"{locked_url}/rate/")
    page.goto(f"{locked_url}/rate")
    expect(page).to_have_url(f"{locked_url}/rate/")
    expect(page.get_by_role("heading", name="Rate replies")).to_be_visible()
    expect(page.locator("#rater-start")).to_be_visible()
    expect(page.locator("#rater-name")).to_be_visible()
    expect(page.locator("#rater-eval")).to_be_visible()
    for tab in TABS:
        expect(page.get_by_role("tab", name=tab, exact=True)).to_have_count(0)
    expect(page.get_by_text("Owner only")).to_have_count(0)
    expect(page.locator("#owner-status")).to_have_count(0)
    # with no evaluation open, Start rating says what is missing (the raters' plain route answers)
    page.locator("#rater-name input, #rater-name textarea").first.fill("Ana")
    page.locator("#rater-start").click()
    expect(page.locator("#rater-progress")).to_contain_text("Choose an evaluation first", timeout=30_000)
    assert studio_answer(page, "/config") == 401


def test_inside_another_sites_frame_the_owner_is_told_where_to_sign_in(locked_url, chromium, tmp_path):
    """On a Space the app is framed by huggingface.co, another site: the browser keeps no
    SameSite=Strict cookie there, and the sign-in must say so instead of reloading in vain."""
    import http.server
    import threading

    from playwright.sync_api import expect

    page = chromium.new_page()
    port = free_port()
    framed = locked_url  # the app, on 127.0.0.1
    (tmp_path / "index.html").write_text(f'<iframe id="app" src="{framed}" width="1200" height="1200"></iframe>')
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        page.goto(f"http://localhost:{port}/index.html")  # "localhost" is another site than "127.0.0.1"
        app = page.frame_locator("#app")
        expect(app.get_by_text("Owner only.")).to_be_visible()
        app.locator("#password").fill(PASSWORD)
        app.locator("#sign-in-button").click()
        expect(app.locator("#message")).to_contain_text("Open this app at its own address")
        expect(app.locator("#owner-status")).to_have_count(0)
    finally:
        server.shutdown()
