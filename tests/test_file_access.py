"""What the running app serves and accepts as files, over real HTTP.

The app is started as app.py starts it (build_app + launch with the upload
limit), on a free port, with its data root inside the working directory (as
the default `.tuner/` is). Gradio's /gradio_api/file= route must serve only
files the app itself returned, never /etc/passwd, the ratings database or a
dataset, however the path is written; an upload over the limit is refused.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from browser import serve as launch
from tuner.paths import REPO_ROOT, max_upload, upload_bytes

SECRET = "canary-3f1b: must never be served"


def serve(home: Path, max_file_size: str | None = None):
    """The real app on a free port, launched with the upload limit app.py uses;
    returns (demo, base url)."""
    return launch(home, "smollm2-135m-instruct", seed=0, max_file_size=max_file_size or max_upload())


def endpoint(url: str, *labels: str) -> str:
    """The API name of the event whose inputs carry these labels (names like
    /on_export_1 depend on the order events were wired)."""
    info = httpx.get(f"{url}/gradio_api/info", timeout=30).json()["named_endpoints"]
    found = [name for name, spec in info.items() if [p.get("label") for p in spec["parameters"]] == list(labels)]
    assert found, f"no endpoint with inputs {labels}"
    return found[0]


def call(url: str, api: str, data: list) -> tuple[str, object]:
    """Call an event over the HTTP API, as any script could: (last event, its data)."""
    api = api.lstrip("/")
    started = httpx.post(f"{url}/gradio_api/call/{api}", json={"data": data}, timeout=30)
    started.raise_for_status()
    stream = httpx.get(f"{url}/gradio_api/call/{api}/{started.json()['event_id']}", timeout=300).text
    event, payload = None, None
    for line in stream.splitlines():
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            payload = json.loads(line[5:].strip())
    return event, payload


def upload(url: str, name: str, content: bytes) -> httpx.Response:
    return httpx.post(f"{url}/gradio_api/upload", files={"files": (name, content)}, timeout=120)


def raw_get(url: str, path: str) -> tuple[int, bytes]:
    """GET with the path sent exactly as written (httpx would remove ../ segments)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@pytest.fixture
def app(tmp_path, monkeypatch):
    """The app with its data root at ./home of the working directory, a saved
    dataset and a ratings database in it, and a secret file outside it."""
    monkeypatch.chdir(tmp_path)
    home = tmp_path / "home"
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text(SECRET, encoding="utf-8")
    from tuner import data as tdata
    from tuner.paths import Layout

    saved = tdata.save_version([{"messages": [{"role": "user", "content": "Q"},
                                              {"role": "assistant", "content": SECRET}]}],
                               "private", Layout(home).datasets)
    demo, url = serve(home)
    assert Layout(home).ratings_db.is_file()
    yield url, home, saved
    demo.close()


# --- the upload limit ---------------------------------------------------------------
def test_an_upload_over_the_limit_is_refused_and_one_within_it_accepted(tmp_path):
    limit = upload_bytes(max_upload())
    assert max_upload({}) == "50mb" and limit == 50 * 1024 * 1024
    demo, url = serve(tmp_path / "home")  # with the default limit, as app.py launches
    try:
        too_big = upload(url, "big.jsonl", b"x" * (limit + 1))
        assert too_big.status_code == 413, too_big.text
        assert "exceeded maximum allowed size" in too_big.text
        fine = upload(url, "fine.jsonl", b'{"a": 1}\n' * 1000)
        assert fine.status_code == 200, fine.text
        (stored,) = fine.json()
        assert Path(stored).read_bytes() == b'{"a": 1}\n' * 1000
    finally:
        demo.close()


def test_the_limit_is_set_in_one_place_and_tuner_max_upload_overrides_it(tmp_path):
    assert max_upload({"TUNER_MAX_UPLOAD": "64 KB"}) == "64kb"
    with pytest.raises(ValueError, match="TUNER_MAX_UPLOAD: upload limit 'lots' is not a size like 50mb"):
        max_upload({"TUNER_MAX_UPLOAD": "lots"})
    # the importers read the same setting: a fresh process with the variable set
    code = "from tuner import data; print(data.MAX_FILE_BYTES)"
    env = {"PATH": "/usr/bin:/bin", "TUNER_MAX_UPLOAD": "64kb"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert out.stdout.strip() == str(64 * 1024), out.stderr
    demo, url = serve(tmp_path / "home", max_upload({"TUNER_MAX_UPLOAD": "64kb"}))
    try:
        assert upload(url, "over.csv", b"q,a\n" + b"x" * (64 * 1024)).status_code == 413
        assert upload(url, "at.csv", b"x" * (64 * 1024)).status_code == 200  # the limit itself is allowed
    finally:
        demo.close()


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


def test_the_file_route_refuses_paths_the_app_never_returned(app, tmp_path):
    url, home, saved = app
    ratings_db = home / "ratings.db"
    attempts = ESCAPES + [
        f"/gradio_api/file={tmp_path / 'outside' / 'secret.txt'}",
        f"/gradio_api/file={ratings_db}",  # inside the data root, never returned by the app
        "/gradio_api/file=home/ratings.db",  # the same, relative to the working directory
        "/gradio_api/file=./home/ratings.db",
        f"/gradio_api/file={saved}",  # a saved dataset
        "/gradio_api/file=home/datasets/private.jsonl",
        f"/gradio_api/file/{ratings_db}",
    ]
    served = []
    for path in attempts:
        status, body = raw_get(url, path)
        leaked = b"root:" in body or SECRET.encode() in body or body.startswith(b"SQLite format 3")
        if status not in (400, 403, 404) or leaked:
            served.append((path, status, body[:80]))
    assert not served, f"served what the app never returned: {served}"


def test_a_file_the_app_returned_from_an_export_is_served(app):
    url, home, saved = app
    export = endpoint(url, "Dataset (version)", "Part of the chosen version", "Format")
    event, (file, message) = call(url, export, ["saved: private", "all", "JSONL"])
    assert event == "complete" and "is ready" in message, message
    status, body = raw_get(url, httpx.URL(file["url"]).raw_path.decode())
    assert status == 200 and body == saved.read_bytes()
    # the app wrote it under a temp folder and returned a copy in gradio's cache:
    # only the copy is served, and the same dataset by its own path still is not
    assert raw_get(url, f"/gradio_api/file={saved}")[0] in (403, 404)


def test_file_inputs_cannot_name_files_on_the_server(app, tmp_path):
    """A script can send any path as an upload's value: gradio takes only files
    that were uploaded to it, so the importer never reads /etc/passwd or the data root."""
    url, home, saved = app
    datasets = home / "datasets"
    before = sorted(p.name for p in datasets.iterdir())
    importer = endpoint(url, "Import a file: JSONL, JSON, CSV or Parquet")
    for path in ["/etc/passwd", str(saved), str(home / "ratings.db"), str(tmp_path / "outside" / "secret.txt"),
                 "/tmp/gradio/../../etc/passwd", "home/datasets/private.jsonl"]:
        event, payload = call(url, importer, [{"path": path, "meta": {"_type": "gradio.FileData"}}])
        assert event == "error", (path, payload)
        assert SECRET not in json.dumps(payload)
    assert sorted(p.name for p in datasets.iterdir()) == before


# --- exports and the upload allowance (issue 25.4) ----------------------------------------
def test_a_large_export_never_blocks_the_next_upload(trained_run, tmp_path, monkeypatch):
    """The owner's uploads are capped in total (TUNER_UPLOAD_TOTAL, small here so that an
    adapter zip is large beside it); an export handed out for download, another Gradio app's
    files in the machine's shared temp folder, and copies of other downloads never count."""
    import shutil

    shared = tmp_path / "shared-gradio"  # the machine's /tmp/gradio, which every Gradio app uses
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(shared))
    monkeypatch.setenv("TUNER_UPLOAD_TOTAL", "512kb")
    (shared / "another-app").mkdir(parents=True)
    with open(shared / "another-app" / "video.mp4", "wb") as other:
        other.truncate(2 * 1024**3)  # sparse: counts 2 GB, costs nothing
    home = tmp_path / "home"
    run_id = trained_run.parent.name
    shutil.copytree(trained_run.parent, home / "runs" / run_id)
    demo, url = serve(home)
    try:
        event, (status, file) = call(url, "export_adapter", [run_id])
        assert event == "complete" and "packed" in status, status
        exported = home / "exports" / f"{run_id}-adapter.zip"
        assert exported.stat().st_size > 512 * 1024  # larger than the whole upload allowance
        answer = httpx.get(f"{url}{httpx.URL(file['url']).raw_path.decode()}", timeout=60)
        assert answer.status_code == 200 and answer.content == exported.read_bytes()
        uploads = home / "uploads"  # Tuner's own upload folder
        assert not any(p.stat().st_ino == exported.stat().st_ino for p in uploads.rglob("*") if p.is_file())

        dataset = b'{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}\n'
        sent = upload(url, "after-export.jsonl", dataset * 4)
        assert sent.status_code == 200, sent.text
        (stored,) = sent.json()
        assert Path(stored).resolve().is_relative_to(uploads.resolve())  # Tuner's own folder, in the data root
        importer = endpoint(url, "Import a file: JSONL, JSON, CSV or Parquet")
        event, payload = call(url, importer, [{"path": stored, "meta": {"_type": "gradio.FileData"}}])
        assert event == "complete" and "4 rows imported" in json.dumps(payload), payload
        # a copy of some other download in Tuner's own upload folder does not count either
        (uploads / "a-download").mkdir(parents=True)
        with open(uploads / "a-download" / "results.zip", "wb") as copy:
            copy.truncate(2 * 1024**3)
        assert upload(url, "again.jsonl", dataset).status_code == 200
        # the uploads themselves are still capped
        big = upload(url, "big.jsonl", dataset * (512 * 1024 // len(dataset) + 1))
        assert big.status_code == 507 and "upload folder is full" in big.text
    finally:
        demo.close()
