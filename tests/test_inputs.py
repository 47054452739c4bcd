"""Inputs: names that try to be paths, symlinks out of the data root, malformed uploads.

Every attempt is refused with a message that says why, and a check of the
folders afterwards shows nothing was written (or read) outside the data root
and nothing saved before was lost.
"""

from __future__ import annotations

import json

import pytest

from helpers import call_api, chat, endpoint, serve_signed_in, upload, write_jsonl
from tuner import data as tdata
from tuner import importers as imp
from tuner.paths import NAME_MAX, inside, safe_name

SECRET = "canary-9c2e: outside the data root"

# (name, a part of the refusal's message)
PATH_NAMES = [
    ("../escape", "is a path, not a name"),
    ("../../etc/passwd", "is a path, not a name"),
    ("/etc/passwd", "is a path, not a name"),
    ("/tmp/escape", "is a path, not a name"),
    ("faq/../../escape", "is a path, not a name"),
    ("..\\..\\escape", "is a path, not a name"),
    ("C:\\Windows\\win.ini", "is a path, not a name"),
    ("\uff0e\uff0e\uff0fescape", "is a path, not a name"),  # fullwidth ../
    ("%2e%2e", "%-encoded characters"),
    ("..%2fescape", "%-encoded characters"),
    ("%2e%2e%2f%2e%2e%2fetc%2fpasswd", "%-encoded characters"),
    ("%252e%252e%252fescape", "%-encoded characters"),
    ("..", "'.' and '..' are not names"),
    (".", "'.' and '..' are not names"),
    ("escape\x00.jsonl", "a NUL byte is not allowed"),
    ("\x00", "a NUL byte is not allowed"),
    ("two\nlines", "control characters"),
    ("x" * (NAME_MAX + 1), f"is {NAME_MAX + 1} characters long; at most {NAME_MAX}"),
    ("é" * 5000, "is 5000 characters long"),
    ("", "has no letters or digits"),
    ("   ", "has no letters or digits"),
    ("...", "has no letters or digits"),
    ("???", "has no letters or digits"),
]


@pytest.fixture
def root(tmp_path):
    """A data root's datasets folder with one saved version, and a folder outside it."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.jsonl").write_text(json.dumps(chat("secret?", SECRET)) + "\n", encoding="utf-8")
    folder = tmp_path / "home" / "datasets"
    folder.mkdir(parents=True)
    tdata.save_version([chat("Q", "A")], "faq", folder, note="first")
    return folder, outside


def snapshot(*folders):
    """Every file under the folders (recursively), with its bytes."""
    return {str(p): p.read_bytes() for f in folders for p in sorted(f.parent.parent.rglob("*")) if p.is_file()}


# --- the helpers -----------------------------------------------------------------------
def test_safe_name_cleans_a_plain_name():
    assert safe_name("my set") == "my-set"
    assert safe_name("  Café FAQ (v1) ") == "Cafe-FAQ-v1"
    assert safe_name(".hidden") == "hidden" and safe_name("-rf") == "rf"
    assert safe_name("run.v2-1") == "run.v2-1" and safe_name("a..b") == "a.b"
    assert safe_name("x" * NAME_MAX) == "x" * NAME_MAX


@pytest.mark.parametrize("name, message", PATH_NAMES, ids=[repr(n[:20]) for n, _ in PATH_NAMES])
def test_safe_name_refuses_what_could_be_a_path(name, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")) as caught:
        safe_name(name, "dataset name")
    assert str(caught.value).startswith("dataset name ")


def test_inside_refuses_dots_absolute_paths_nul_and_symlinks_out(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.txt").write_text(SECRET)
    assert inside(root, "sub", "a.txt") == (root / "sub" / "a.txt").resolve()
    assert inside(root, "sub/../a.txt") == (root / "a.txt").resolve()  # '..' that stays inside is fine
    for parts in [("..", "outside", "secret.txt"), ("sub", "../../outside"), (str(outside / "secret.txt"),),
                  ("/etc/passwd",), ("sub", "/etc")]:
        with pytest.raises(ValueError, match="leads outside the folder root/"):
            inside(root, *parts)
    with pytest.raises(ValueError, match="a NUL byte is not allowed in a path"):
        inside(root, "a\x00b")
    (root / "link").symlink_to(outside / "secret.txt")
    (root / "dirlink").symlink_to(outside, target_is_directory=True)
    for parts in [("link",), ("dirlink", "secret.txt"), ("dirlink",)]:
        with pytest.raises(ValueError, match="symbolic link"):
            inside(root, *parts)
    (root / "loop").symlink_to(root / "loop")
    with pytest.raises(ValueError, match="not a usable path"):
        inside(root, "loop")
    # the root itself may be a symlink (the owner's own choice of data root)
    (tmp_path / "root-link").symlink_to(root, target_is_directory=True)
    assert inside(tmp_path / "root-link", "sub") == (root / "sub").resolve()


# --- dataset names ---------------------------------------------------------------------
@pytest.mark.parametrize("name, message", PATH_NAMES, ids=[repr(n[:20]) for n, _ in PATH_NAMES])
def test_a_dataset_name_that_is_a_path_is_refused_and_nothing_is_written(root, name, message):
    folder, outside = root
    before = snapshot(folder)
    for save in (tdata.save_dataset, tdata.save_version):
        with pytest.raises(ValueError, match="dataset name"):
            save([chat("new", "rows")], name, folder)
    result = imp.import_file(write_jsonl(folder.parent.parent / "upload.jsonl", [chat("u", "v")]))
    with pytest.raises(imp.ImportProblem, match=r"upload.jsonl: dataset name .*" + message[:12].replace("(", r"\(")):
        imp.save_import(result, name, folder)
    (folder.parent.parent / "upload.jsonl").unlink()
    assert snapshot(folder) == before  # nothing written anywhere under tmp_path, the old version intact
    with pytest.raises(ValueError):
        tdata.saved_path(folder, name)


def test_a_symlink_in_the_data_root_pointing_outside_is_neither_read_nor_written(root):
    folder, outside = root
    (folder / "leak.jsonl").symlink_to(outside / "secret.jsonl")
    (folder / "faq-v2.jsonl").symlink_to(outside / "secret.jsonl")
    before = snapshot(folder)
    listed = tdata.available(folder)
    assert "saved: leak" not in listed and "saved: faq-v2" not in listed and "saved: faq" in listed
    assert tdata.versions(folder / "faq.jsonl") == [folder / "faq.jsonl"]
    with pytest.raises(ValueError, match="symbolic link"):
        tdata.saved_path(folder, "leak")
    # saving "leak" would land on the link: refused, and the file it points to is untouched
    with pytest.raises(ValueError, match="'leak.jsonl' leads outside the folder datasets/"):
        tdata.save_version([chat("overwrite", "it")], "leak", folder)
    # the next version of "faq" would be the linked faq-v2: refused by name, not written through
    with pytest.raises(ValueError, match="'faq-v2.jsonl' leads outside the folder datasets/"):
        tdata.save_version([chat("Q2", "A2")], "faq", folder)
    assert snapshot(folder) == before


# --- run ids ------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["../outside/stolen", "/etc", "..", "%2e%2e%2fstolen", "..\\stolen", "a\x00b",
                                 "x" * 200, "20260101 000000", "", None], ids=lambda bad: repr(bad)[:20])
def test_run_ids_that_are_paths_are_refused_and_linked_run_folders_are_not_runs(tmp_path, bad):
    from tuner.runs import RunManager

    runs, outside = tmp_path / "runs", tmp_path / "outside"
    (runs / "20260101-000000-faq-ab12").mkdir(parents=True)
    (runs / "20260101-000000-faq-ab12" / "run.json").write_text(json.dumps(
        {"run_id": "20260101-000000-faq-ab12", "status": "stopped", "config": {}}))
    (outside / "stolen").mkdir(parents=True)
    (outside / "stolen" / "run.json").write_text(json.dumps({"run_id": "stolen", "status": "stopped",
                                                             "config": {"dataset": SECRET}}))
    (runs / "stolen").symlink_to(outside / "stolen", target_is_directory=True)
    manager = RunManager(runs, tmp_path / "models")
    assert [r["run_id"] for r in manager.runs()] == ["20260101-000000-faq-ab12"]
    assert manager.get("stolen") is None
    with pytest.raises(ValueError, match="run id"):
        manager.get(bad)
    with pytest.raises(ValueError, match="run id"):
        manager.resume(bad)
    assert (outside / "stolen" / "run.json").read_text().count(SECRET) == 1  # untouched


# --- prompt files ----------------------------------------------------------------------
@pytest.mark.parametrize("name, content, message", [
    ("prompts.txt", b"prompt\nhi\n", "prompts.txt: prompt files of type '.txt' cannot be read"),
    ("image.csv", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", r"image.csv: a binary file, not text \(a NUL byte"),
    ("wide.jsonl", '{"prompt": "hi"}\n'.encode("utf-16-le"), "wide.jsonl: a binary file"),
    ("latin.csv", "prompt\ncaf\u00e9\n".encode("latin-1"), r"latin.csv: not UTF-8 text \(byte 0xE9 at offset 10, line 2\)"),
    ("empty.jsonl", b"", "empty.jsonl: the file is empty"),
])
def test_prompt_files_of_the_wrong_kind_are_refused_by_name(tmp_path, name, content, message):
    from ratings import evalsets

    (tmp_path / name).write_bytes(content)
    with pytest.raises(ValueError, match=message):
        evalsets.from_file(tmp_path / name)


def test_a_prompt_file_over_the_size_limit_is_refused_by_name(tmp_path):
    from ratings import evalsets

    huge = tmp_path / "huge.csv"
    with huge.open("wb") as fh:  # sparse: over the limit without writing 50 MB
        fh.truncate(tdata.MAX_FILE_BYTES + 1)
    with pytest.raises(ValueError, match=r"huge.csv: 50.0 MB is over the 50.0 MB limit"):
        evalsets.from_file(huge)


# --- malformed dataset uploads -----------------------------------------------------------
def _parquet_bytes(tmp_path) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"question": ["Q"], "answer": ["A"]}), tmp_path / "real.parquet")
    return (tmp_path / "real.parquet").read_bytes()


MALFORMED = [
    # (file name, content or callable(tmp_path) -> bytes, what the message must say)
    ("photo.jsonl", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00", r"photo.jsonl: a binary file, not text \(a NUL byte at offset 8, line 3\)"),
    ("data.jsonl", _parquet_bytes, r"data.jsonl: a binary file, not text"),
    ("archive.csv", b"PK\x03\x04\x14\x00\x00\x00\x08\x00", r"archive.csv: a binary file"),
    ("wide.csv", "question,answer\nQ,A\n".encode("utf-16-le"), "wide.csv: a binary file"),
    ("empty.jsonl", b"", "empty.jsonl: the file is empty"),
    ("empty.parquet", b"", "empty.parquet: the file is empty"),
    ("blank.json", b"\n  \n", "blank.json: the file is empty"),
    ("table.jsonl", b"question,answer\nQ,A\nQ2,A2\n", r"table.jsonl: line 1 is not JSON .*looks like CSV, not JSONL"),
    ("chat.csv", json.dumps(chat("Q", "A")).encode() + b"\n", r"chat.csv: line 1 starts with '\{': this looks like JSON"),
    ("chat.parquet", json.dumps(chat("Q", "A")).encode() + b"\n", "chat.parquet: not a readable Parquet file"),
    ("notes.txt", b"question,answer\nQ,A\n", "notes.txt: files of type '.txt' cannot be imported"),
    ("noext", b'{"question": "Q", "answer": "A"}\n', "noext: files of type 'none' cannot be imported"),
    ("cut.json", b'[{"question": "Q", "answer": "A"}, {"question": ', r"cut.json: not valid JSON \(line 1, column 49"),
    ("latin.jsonl", '{"question": "caf\u00e9", "answer": "A"}\n'.encode("latin-1"),
     r"latin.jsonl: not UTF-8 text \(byte 0xE9 at offset 17, line 1\)"),
    ("odd.csv", b"colour,size\nred,9\n", r"odd.csv: the columns \(colour, size\) match no known shape"),
]


@pytest.mark.parametrize("name, content, message", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_a_malformed_upload_is_refused_by_name_and_nothing_saved_is_lost(root, tmp_path, name, content, message):
    folder, _outside = root
    before = snapshot(folder)
    path = tmp_path / name
    path.write_bytes(content(tmp_path) if callable(content) else content)
    with pytest.raises(imp.ImportProblem, match=message):
        imp.save_import(imp.import_file(path), path.stem, folder)
    assert {k: v for k, v in snapshot(folder).items() if "/home/" in k} == \
        {k: v for k, v in before.items() if "/home/" in k}


def test_bad_rows_are_named_by_line_and_field_and_the_good_ones_kept(root, tmp_path):
    folder, _outside = root
    path = write_jsonl(tmp_path / "mixed.jsonl", [
        {"question": "Q1", "answer": "A1"},
        {"question": "Q2", "answer": ""},
        {"question": "Q3"},
        {"question": ["a", "list"], "answer": "A4"},
        "{broken",
        "\x7f\x80 not json",
        {"question": "Q7", "answer": "A7"},
    ])
    result = imp.import_file(path)
    assert [r["messages"][0]["content"] for r in result.rows] == ["Q1", "Q7"]
    assert result.problems == [
        'line 2: "answer" (assistant reply) is empty',
        'line 3: no "answer" (assistant reply)',
        'line 4: "question" (user turn) is ["a", "list"], a list; expected text',
        "line 5: not valid JSON (Expecting property name enclosed in double quotes)",
        "line 6: not valid JSON (Expecting value)",
    ]
    saved = imp.save_import(result, "mixed", folder)
    assert tdata.load_jsonl(saved).rows == result.rows
    assert tdata.load_jsonl(folder / "faq.jsonl").rows == [chat("Q", "A")]  # the earlier dataset is intact


@pytest.mark.server
def test_a_malformed_upload_through_the_running_app_says_why_and_saves_nothing(tmp_path):
    """The real app: upload a binary file, then the Dataset tab's import event."""
    home = tmp_path / "home"
    tdata.save_version([chat("Q", "A")], "faq", home / "datasets")
    before = {p.name: p.read_bytes() for p in (home / "datasets").iterdir()}
    served = serve_signed_in(home, "inputs owner words")  # the owner, signed in
    owner = served.owner
    try:
        importer = endpoint(owner, "Import a file: JSONL, JSON, CSV or Parquet")
        for name, content, message in [
            ("photo.jsonl", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "photo.jsonl: a binary file, not text"),
            ("table.jsonl", b"question,answer\nQ,A\n", "looks like CSV, not JSONL"),
            ("empty.csv", b"", "empty.csv: the file is empty"),
        ]:
            (stored,) = upload(owner, name, content).json()
            event, outputs = call_api(owner, importer, [{"path": stored, "meta": {"_type": "gradio.FileData"}}])
            text = json.dumps(outputs, ensure_ascii=False)
            assert event == "complete" and message in text and "Nothing was saved" in text, text
        # a type the upload box does not take is refused by gradio before the importer runs
        (stored,) = upload(owner, "notes.txt", b"question,answer\nQ,A\n").json()
        event, _ = call_api(owner, importer, [{"path": stored, "meta": {"_type": "gradio.FileData"}}])
        assert event == "error"
    finally:
        served.close()
    assert {p.name: p.read_bytes() for p in (home / "datasets").iterdir()} == before
