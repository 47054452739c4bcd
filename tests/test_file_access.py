"""What the running app serves and accepts as files, over real HTTP.

The app is built and served as app.py serves it (build_app, then uvicorn), on a free
port, with its data root inside the working directory (as the default `.tuner/` is)
and an owner password; the file-route tests share one server (each signs the owner in
anew), the upload-limit tests start their own with the limit they need. The studio's
routes are the owner's: to a stranger every one of them, /gradio_api/file= and
/gradio_api/upload included, is refused (401; a browser is sent to the sign-in page)
whatever the path. To the owner, Gradio's file route
serves only files the app itself returned, never /etc/passwd, the ratings database or
a dataset, however the path is written; an upload over the limit is refused. The
raters' app at /rate/ (its own Gradio app, open to anyone) serves no file at all: it
shares the studio's upload folder and Gradio's static paths.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from gradio_http import owner_client, sign_in
from helpers import Served, call_api, endpoint, mark_users, serve_signed_in, upload
from tuner.paths import REPO_ROOT, max_upload, upload_bytes

SECRET = "canary-3f1b: must never be served"
PASSWORD = "file-access owner words"
SIGN_IN_PAGE = "/tuner/sign-in"


def serve(home: Path, password: str | None = PASSWORD) -> Served:
    """The real app over `home` on a free port, the owner (`password`) signed in
    (helpers.serve_signed_in); `password` None: open mode."""
    return serve_signed_in(home, password)


def raw_get(url: str, path: str, cookies: dict | None = None, method: str = "GET",
            headers: dict | None = None) -> tuple[int, bytes]:
    """A request with the path sent exactly as written (httpx would remove ../ segments);
    `cookies`: the owner's, as the browser sends them (a GET needs no anti-forgery header)."""
    status, body, _ = raw_request(url, path, cookies, method, headers)
    return status, body


def raw_request(url: str, path: str, cookies: dict | None = None, method: str = "GET",
                headers: dict | None = None) -> tuple[int, bytes, dict]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        if cookies:
            conn.putheader("Cookie", "; ".join(f"{k}={v}" for k, v in cookies.items()))
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.read(), {k.lower(): v for k, v in response.getheaders()}
    finally:
        conn.close()


def leaks(body: bytes, *also: bytes) -> bool:
    return (b"root:" in body or SECRET.encode() in body or body.startswith(b"SQLite format 3")
            or any(a and a in body for a in also))


def assert_refused_to_a_stranger(url: str, path: str, *secrets: bytes) -> None:
    """A stranger asking for a studio route gets 401 and nothing of the file; a browser
    (asking for a page) is sent to the sign-in page instead."""
    status, body = raw_get(url, path)
    assert status == 401 and b"Owner only" in body and not leaks(body, *secrets), (path, status, body[:120])
    status, body, headers = raw_request(url, path, headers={"Accept": "text/html"})
    assert status == 303 and headers.get("location") == SIGN_IN_PAGE and not leaks(body, *secrets), \
        (path, status, body[:120])


@pytest.fixture(scope="module")
@mark_users("server")
def served_app(tmp_path_factory):
    """One app for the module's file-route tests, with its data root at ./home of the working
    directory (the module's tests run there from the first that uses it), a saved dataset and a
    ratings database in it, and a secret file outside it: (the app, the folder, home, the dataset)."""
    from tuner import data as tdata
    from tuner.paths import Layout

    folder = tmp_path_factory.mktemp("file-access")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        home = folder / "home"
        (folder / "outside").mkdir()
        (folder / "outside" / "secret.txt").write_text(SECRET, encoding="utf-8")
        saved = tdata.save_version([{"messages": [{"role": "user", "content": "Q"},
                                                  {"role": "assistant", "content": SECRET}]}],
                                   "private", Layout(home).datasets)
        served = serve(home)
        assert Layout(home).ratings_db.is_file()
        yield served, folder, home, saved
        served.close()


@pytest.fixture
def app(served_app):
    """The module's app with the owner signed in anew for this test (a test may sign out):
    (the app, the folder holding ./home and ./outside, home, the saved dataset)."""
    served, folder, home, saved = served_app
    cookies = sign_in(served.url, PASSWORD)
    fresh = Served(served.tuner, served.url, owner_client(served.url, cookies, timeout=120),
                   httpx.Client(base_url=served.url, timeout=120), cookies)
    yield fresh, folder, home, saved
    fresh.owner.close()
    fresh.stranger.close()


# --- the upload limit ---------------------------------------------------------------
@pytest.mark.server
@pytest.mark.parametrize("password", [PASSWORD, None], ids=["owner", "open-mode"])
def test_an_upload_over_the_limit_is_refused_and_one_within_it_accepted(tmp_path, monkeypatch, password):
    monkeypatch.delenv("TUNER_MAX_UPLOAD", raising=False)
    limit = upload_bytes(max_upload())
    assert max_upload({}) == "50mb" and limit == 50 * 1024 * 1024
    home = tmp_path / "home"
    served = serve(home, password)  # with the default limit, as app.py serves
    try:
        too_big = upload(served.owner, "big.jsonl", b"x" * (limit + 1))
        assert too_big.status_code == 413, too_big.text
        assert "exceeded maximum allowed size" in too_big.text
        fine = upload(served.owner, "fine.jsonl", b'{"a": 1}\n' * 1000)
        assert fine.status_code == 200, fine.text
        (stored,) = fine.json()
        assert Path(stored).read_bytes() == b'{"a": 1}\n' * 1000
        if password is None:
            return
        # a stranger's upload is refused before Gradio reads it: nothing is written, nothing counted
        before = sorted(p for p in (home / "uploads").rglob("*") if p.is_file())
        held = served.tuner.gate.held_uploads()
        for body in (b'{"a": 1}\n', b"x" * (limit + 1)):
            refused = upload(served.stranger, "stranger.jsonl", body)
            assert refused.status_code == 401 and "Owner only" in refused.text, refused.text
        # the raters' app, open to anyone, takes no upload either
        assert served.stranger.post("/rate/gradio_api/upload", files={"files": ("r.jsonl", b"x")}).status_code == 405
        assert sorted(p for p in (home / "uploads").rglob("*") if p.is_file()) == before
        assert served.tuner.gate.held_uploads() == held
        # nor can a stranger read back what the owner uploaded, from the studio or from the raters' app
        assert_refused_to_a_stranger(served.url, f"/gradio_api/file={stored}", b'{"a": 1}')
        status, body = raw_get(served.url, f"/rate/gradio_api/file={stored}")
        assert status == 404 and b'{"a": 1}' not in body, (status, body[:120])
        assert raw_get(served.url, f"/gradio_api/file={stored}", served.cookies) == (200, b'{"a": 1}\n' * 1000)
    finally:
        served.close()


@pytest.mark.server
def test_the_limit_is_set_in_one_place_and_tuner_max_upload_overrides_it(tmp_path, monkeypatch):
    assert max_upload({"TUNER_MAX_UPLOAD": "64 KB"}) == "64kb"
    with pytest.raises(ValueError, match="TUNER_MAX_UPLOAD: upload limit 'lots' is not a size like 50mb"):
        max_upload({"TUNER_MAX_UPLOAD": "lots"})
    # the importers read the same setting: a fresh process with the variable set
    code = "from tuner import data; print(data.MAX_FILE_BYTES)"
    env = {"PATH": "/usr/bin:/bin", "TUNER_MAX_UPLOAD": "64kb"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert out.stdout.strip() == str(64 * 1024), out.stderr
    monkeypatch.setenv("TUNER_MAX_UPLOAD", "64kb")  # app.py reads it when the app is built
    served = serve(tmp_path / "home")
    try:
        assert upload(served.owner, "over.csv", b"q,a\n" + b"x" * (64 * 1024)).status_code == 413
        assert upload(served.owner, "at.csv", b"x" * (64 * 1024)).status_code == 200  # the limit itself is allowed
        assert upload(served.stranger, "at.csv", b"x" * (64 * 1024)).status_code == 401
    finally:
        served.close()


# --- the file route -------------------------------------------------------------------
ESCAPES = [
    "/gradio_api/file=/etc/passwd",
    "/gradio_api/file=../../etc/passwd",
    "/gradio_api/file=../../../../../../../../etc/passwd",
    "/gradio_api/file=%2Fetc%2Fpasswd",
    "/gradio_api/file=%2e%2e/%2e%2e/etc/passwd",
    "/gradio_api/file=..%2f..%2f..%2f..%2f..%2f..%2fetc%2fpasswd",
    "/gradio_api/file=%252e%252e%252f%252e%252e%252fetc%252fpasswd",
    "/gradio_api/file=..\\..\\..\\..\\etc\\passwd",
    "/gradio_api/file=/tmp/gradio/../../etc/passwd",
    "/gradio_api/file=/etc/passwd%00.png",
    "/gradio_api/file/../../etc/passwd",
    "/gradio_api/file/%2Fetc%2Fpasswd",
    "/gradio_api/file=outside/secret.txt",
    "/gradio_api/file=home/../outside/secret.txt",
    "/gradio_api/file=file:///etc/passwd",
    "/gradio_api/file=http://127.0.0.1:1/",
    "/gradio_api/file=http://169.254.169.254/latest/meta-data/",
]
# public prefixes (the raters' app, the plain routes) in front of a studio route: the gate
# and the router see the same literal path, so none of these reaches the studio's file route
DETOURS = ["/rate/..{route}", "/rate/gradio_api/..{route}", "/rate/../..{route}", "/tuner/rate/../..{route}",
           "/tuner/sign-in/..{route}", "/tuner/owner/sign-in/../../..{route}", "/rate%2F..{route}",
           "/rate/%2e%2e{route}", "/rate{route}", "/rate/{route}"]


def test_the_file_route_refuses_paths_the_app_never_returned(app):
    served, folder, home, saved = app
    url = served.url
    ratings_db = home / "ratings.db"
    attempts = ESCAPES + [
        f"/gradio_api/file={folder / 'outside' / 'secret.txt'}",
        f"/gradio_api/file={ratings_db}",  # inside the data root, never returned by the app
        "/gradio_api/file=home/ratings.db",  # the same, relative to the working directory
        "/gradio_api/file=./home/ratings.db",
        f"/gradio_api/file={saved}",  # a saved dataset
        "/gradio_api/file=home/datasets/private.jsonl",
        f"/gradio_api/file/{ratings_db}",
    ]
    served_to_owner = []
    for path in attempts:
        status, body = raw_get(url, path, served.cookies)
        if status not in (400, 403, 404) or leaks(body):
            served_to_owner.append((path, status, body[:80]))
    assert not served_to_owner, f"served what the app never returned: {served_to_owner}"
    # a stranger gets none of the studio's file routes, whatever the path names
    for path in attempts + ["/gradio_api/file=", "/gradio_api/file=anything.txt", "/gradio_api/file/x"]:
        assert_refused_to_a_stranger(url, path)
        status, body = raw_get(url, path, method="HEAD")
        assert status == 401 and not body, (path, status)
    # nor through the raters' app, or a public route's prefix
    for path in attempts:
        for detour in DETOURS:
            tricked = detour.format(route=path)
            status, body = raw_get(url, tricked)
            assert status in (400, 401, 403, 404, 405) and not leaks(body), (tricked, status, body[:120])


def test_a_file_the_app_returned_from_an_export_is_served(app):
    served, _, home, saved = app
    url = served.url
    export = endpoint(served.owner, "Dataset (version)", "Part of the chosen version", "Format")
    event, (file, message) = call_api(served.owner, export, ["saved: private", "all", "JSONL"])
    assert event == "complete" and "is ready" in message, message
    route = httpx.URL(file["url"]).raw_path.decode()
    status, body = raw_get(url, route, served.cookies)
    assert status == 200 and body == saved.read_bytes()
    # the app wrote it under a temp folder and returned a copy in gradio's cache:
    # only the copy is served, and the same dataset by its own path still is not
    assert raw_get(url, f"/gradio_api/file={saved}", served.cookies)[0] in (403, 404)

    # the owner's own link, to a stranger: refused (GET, HEAD, a range, the older route)
    secret = SECRET.encode()
    assert_refused_to_a_stranger(url, route, secret)
    assert raw_get(url, route, method="HEAD") == (401, b"")
    assert raw_get(url, route, headers={"Range": "bytes=0-20"})[0] == 401
    assert_refused_to_a_stranger(url, f"/gradio_api/file/{file['path']}", secret)
    # the same file by the raters' app (one upload folder for both): refused to anyone
    for cookies in (None, served.cookies):
        for path in (f"/rate/gradio_api/file={file['path']}", f"/rate/gradio_api/file/{file['path']}"):
            status, body = raw_get(url, path, cookies)
            assert status == 404 and secret not in body, (path, status, body[:120])
    for detour in DETOURS:
        status, body = raw_get(url, detour.format(route=route))
        assert status in (400, 401, 403, 404, 405) and secret not in body, (detour, status, body[:120])
    # the owner's cookie sent by a page of another site is a stranger's
    for foreign in ({"Origin": "http://evil.example"}, {"Referer": "http://evil.example/page"},
                    {"Sec-Fetch-Site": "cross-site"}):
        status, body = raw_get(url, route, served.cookies, headers=foreign)
        assert status == 401 and secret not in body, (foreign, status)
    # signed out, the same cookies fetch nothing
    assert served.owner.post("/tuner/owner/sign-out").status_code == 200
    status, body = raw_get(url, route, served.cookies)
    assert status == 401 and secret not in body


def test_file_inputs_cannot_name_files_on_the_server(app):
    """A script can send any path as an upload's value: gradio takes only files
    that were uploaded to it, so the importer never reads /etc/passwd or the data root."""
    served, folder, home, saved = app
    datasets = home / "datasets"
    before = sorted(p.name for p in datasets.iterdir())
    importer = endpoint(served.owner, "Import a file: JSONL, JSON, CSV or Parquet")
    for path in ["/etc/passwd", str(saved), str(home / "ratings.db"), str(folder / "outside" / "secret.txt"),
                 "/tmp/gradio/../../etc/passwd", "home/datasets/private.jsonl"]:
        event, payload = call_api(served.owner, importer, [{"path": path, "meta": {"_type": "gradio.FileData"}}])
        assert event == "error", (path, payload)
        assert SECRET not in json.dumps(payload)
        # a stranger cannot even ask
        refused = served.stranger.post(f"/gradio_api/call/{importer.lstrip('/')}",
                                       json={"data": [{"path": path, "meta": {"_type": "gradio.FileData"}}]})
        assert refused.status_code == 401 and SECRET not in refused.text, refused.text
    assert served.stranger.get("/gradio_api/info").status_code == 401
    assert sorted(p.name for p in datasets.iterdir()) == before


# --- exports and the upload allowance -------------------------------------------------
@pytest.mark.server
def test_a_large_export_never_blocks_the_next_upload(trained_run, tmp_path, monkeypatch):
    """The owner's uploads are capped in total (TUNER_UPLOAD_TOTAL, small here so that an
    adapter zip is large beside it); an export handed out for download, another Gradio app's
    files in the machine's shared temp folder, and copies of other downloads never count."""
    import shutil

    from tuner import export as texport

    shared = tmp_path / "shared-gradio"  # the machine's /tmp/gradio, which every Gradio app uses
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(shared))
    monkeypatch.setenv("TUNER_UPLOAD_TOTAL", "512kb")
    (shared / "another-app").mkdir(parents=True)
    with open(shared / "another-app" / "video.mp4", "wb") as other:
        other.truncate(2 * 1024**3)  # sparse: counts 2 GB, costs nothing
    home = tmp_path / "home"
    run_id = trained_run.parent.name
    shutil.copytree(trained_run.parent, home / "runs" / run_id)
    served = serve(home)
    url = served.url
    try:
        event, (status, file) = call_api(served.owner, "export_adapter", [run_id])
        assert event == "complete" and "packed" in status, status
        exported = home / "exports" / f"{run_id}-adapter.zip"
        assert exported.stat().st_size > 512 * 1024  # larger than the whole upload allowance
        # handed out from the exports' downloads folder (a link in a folder of random name), as is
        downloads = texport.downloads_dir(home)
        assert downloads == home / "exports" / ".downloads"
        handed = Path(file["path"])
        assert handed.resolve().parent.parent == downloads.resolve() and handed.name == exported.name
        route = httpx.URL(file["url"]).raw_path.decode()
        answer = served.owner.get(route, timeout=60)
        assert answer.status_code == 200 and answer.content == exported.read_bytes()
        uploads = home / "uploads"  # Tuner's own upload folder
        assert not any(p.stat().st_ino == exported.stat().st_ino for p in uploads.rglob("*") if p.is_file())
        # the download link is the owner's: not a stranger's, from the studio or the raters' app
        head = exported.read_bytes()[:64]
        assert_refused_to_a_stranger(url, route, head)
        for path in (f"/rate/gradio_api/file={handed}", f"/rate/gradio_api/file={exported}"):
            status_code, body = raw_get(url, path)
            assert status_code == 404 and head not in body, (path, status_code)
        # the exports folder itself is not served, even to the owner (only the links in .downloads)
        assert raw_get(url, f"/gradio_api/file={exported}", served.cookies)[0] in (403, 404)

        dataset = b'{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}\n'
        sent = upload(served.owner, "after-export.jsonl", dataset * 4)
        assert sent.status_code == 200, sent.text
        (stored,) = sent.json()
        assert Path(stored).resolve().is_relative_to(uploads.resolve())  # Tuner's own folder, in the data root
        importer = endpoint(served.owner, "Import a file: JSONL, JSON, CSV or Parquet")
        event, payload = call_api(served.owner, importer, [{"path": stored, "meta": {"_type": "gradio.FileData"}}])
        assert event == "complete" and "4 rows imported" in json.dumps(payload), payload
        # a copy of some other download in Tuner's own upload folder does not count either
        (uploads / "a-download").mkdir(parents=True)
        with open(uploads / "a-download" / "results.zip", "wb") as copy:
            copy.truncate(2 * 1024**3)
        assert upload(served.owner, "again.jsonl", dataset).status_code == 200
        # a stranger's attempts are refused before the cap is even counted
        assert upload(served.stranger, "stranger.jsonl", dataset * 100).status_code == 401
        # the uploads themselves are still capped
        big = upload(served.owner, "big.jsonl", dataset * (512 * 1024 // len(dataset) + 1))
        assert big.status_code == 507 and "upload folder is full" in big.text
    finally:
        served.close()
