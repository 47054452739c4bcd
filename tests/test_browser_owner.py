"""The owner's sign-in in a real browser: a stranger sees an empty, locked page;
the password sets the cookie; after the reload the page is the owner's."""

from __future__ import annotations

import pytest

from browser import ARTIFACTS, free_port, serve

PASSWORD = "s3cret owner words"


@pytest.fixture
def locked_url(tiny_llama, tmp_path):
    from tuner.access import Access

    demo, url = serve(tmp_path / "home", tiny_llama, Access(password=PASSWORD))
    yield url
    demo.close()


def test_owner_signs_in_with_the_password(locked_url, page):
    from playwright.sync_api import expect

    page.goto(locked_url)
    status = page.locator("#owner-status")
    expect(status).to_contain_text("Owner only")
    expect(page.locator("#open-banner")).to_have_count(0)
    # a stranger pressing a button is told why nothing happens
    page.get_by_role("tab", name="Train").click()
    page.locator("#train-stop").click()
    expect(page.get_by_text("Owner only: sign in as the owner").first).to_be_visible()
    page.screenshot(path=str(ARTIFACTS / "owner-locked.png"))

    password = page.locator("#owner-password input")
    password.fill("wrong guess")
    page.locator("#owner-sign-in").click()
    expect(status).to_contain_text("not the owner password")

    password.fill(PASSWORD)
    page.locator("#owner-sign-in").click()
    expect(status).to_contain_text("Signed in as the owner", timeout=30_000)  # after the reload
    cookies = {c["name"]: c for c in page.context.cookies()}
    session = cookies["tuner_owner"]
    assert len(session["value"]) >= 43 and session["httpOnly"] and session["sameSite"] == "Strict"
    assert page.evaluate("document.cookie").find("tuner_owner=") == -1  # no script on the page can read it
    assert not cookies["tuner_csrf"]["httpOnly"]  # the page's own anti-forgery token, sent as a header
    # the same button now reaches the handler: it answers about the run, not about rights
    page.get_by_role("tab", name="Train").click()
    page.locator("#train-stop").click()
    expect(page.locator("#train-message")).to_contain_text("No run is in progress", timeout=30_000)
    expect(page.get_by_text("Owner only: sign in as the owner")).to_have_count(0)
    page.screenshot(path=str(ARTIFACTS / "owner-signed-in.png"))

    page.locator("#owner-sign-out").click()
    expect(status).to_contain_text("Owner only", timeout=30_000)
    assert "tuner_owner" not in {c["name"] for c in page.context.cookies()}
    # the session is revoked on the server too: the old cookie, replayed, is a stranger's
    page.context.add_cookies([{**session, "sameSite": "Strict"}, {**cookies["tuner_csrf"], "sameSite": "Strict"}])
    page.reload()
    expect(status).to_contain_text("Owner only", timeout=30_000)


def test_inside_another_sites_frame_the_owner_is_told_where_to_sign_in(locked_url, page, tmp_path):
    """On a Space the app is framed by huggingface.co, another site: the browser keeps no
    SameSite=Strict cookie there, and the sign-in must say so instead of reloading in vain."""
    import http.server
    import threading

    from playwright.sync_api import expect

    port = free_port()
    framed = locked_url  # the app, on 127.0.0.1
    (tmp_path / "index.html").write_text(f'<iframe id="app" src="{framed}" width="1200" height="1200"></iframe>')
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        page.goto(f"http://localhost:{port}/index.html")  # "localhost" is another site than "127.0.0.1"
        app = page.frame_locator("#app")
        app.locator("#owner-password input").fill(PASSWORD)
        app.locator("#owner-sign-in").click()
        expect(app.locator("#owner-status")).to_contain_text("Open this app at its own address")
    finally:
        server.shutdown()
