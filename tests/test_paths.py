"""tuner.paths' one set of name rules and its one way of writing a file safely."""

from __future__ import annotations

import errno
import threading

import pytest

from tuner import paths
from tuner.paths import StorageError


def test_plain_name_cleans_what_safe_name_would_refuse():
    assert paths.plain_name("2026-run v2/../x", 120) == "2026-run-v2-..-x"
    assert paths.plain_name("../../etc", 120) == "etc"
    assert paths.plain_name("my.set v1", 60, dots=False, trim="-") == "my-set-v1"
    assert paths.plain_name("../", 120) == "" and paths.plain_name(None) == ""
    assert paths.plain_name("a" * 100, 60) == "a" * 60


def test_replacing_swaps_the_whole_file_in_or_leaves_the_old_one(tmp_path):
    target = tmp_path / "out" / "report.md"
    paths.atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with paths.replacing(target, "the report") as tmp:
            tmp.write_text("half")
            raise RuntimeError("stopped")
    assert target.read_text() == "old"
    assert [p.name for p in target.parent.iterdir()] == ["report.md"]


def test_a_failed_write_is_a_storage_error_naming_what_and_where(tmp_path):
    target = tmp_path / "report.md"
    with pytest.raises(StorageError, match=f"Could not save the report in {tmp_path}: the disk is full"):
        with paths.replacing(target, "the report"):
            raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(OSError) as raw:  # without `what`, the error as it came
        with paths.replacing(target):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert not isinstance(raw.value, StorageError)
    assert list(tmp_path.iterdir()) == []


def test_replace_folder_puts_a_new_folder_over_a_full_one(tmp_path):
    target = tmp_path / "export"
    for text in ("old", "new"):
        tmp = tmp_path / f".export.{text}"
        tmp.mkdir()
        (tmp / "file.txt").write_text(text)
        paths.replace_folder(tmp, target)
    assert (target / "file.txt").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["export"]


def test_write_new_never_overwrites_even_when_writers_race(tmp_path):
    def names():
        yield "faq.jsonl"
        yield from (f"faq-v{n}.jsonl" for n in range(2, 100))

    saved = []
    threads = [threading.Thread(target=lambda k=k: saved.append(paths.write_new(tmp_path, f"{k}\n", names(), "faq")))
               for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({p.name for p in saved}) == 8
    assert sorted(p.read_text() for p in saved) == [f"{k}\n" for k in range(8)]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    with pytest.raises(ValueError, match="leads outside"):
        paths.write_new(tmp_path, "x", ["../escape.jsonl"], "faq")
