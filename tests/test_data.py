import json

import pytest

from conftest import POLITE, chat, write_jsonl
from tuner import data as tdata


def test_import_datasets_is_hugging_face_library():
    # datasets/ holds data only; an __init__.py there would shadow the library
    import datasets

    assert hasattr(datasets, "Dataset") and hasattr(datasets, "load_dataset")
    assert not (tdata.STARTER_DATASETS / "__init__.py").exists()


def test_starter_polite_set_is_valid_and_varied():
    result = tdata.load_jsonl(POLITE)
    assert result.problems == []
    assert 20 <= len(result.rows) <= 40
    categories = {r["category"] for r in result.rows}
    assert {"fact", "refusal", "short_answer", "detailed_answer"} <= categories


def test_bad_lines_are_reported_by_number_and_valid_rows_kept(tmp_path):
    path = write_jsonl(tmp_path / "mixed.jsonl", [
        chat("Hi", "Hello!", category="greeting"),
        "{not json",
        {"messages": [{"role": "user", "content": "Only a question"}]},
        {"messages": [{"role": "assistant", "content": "Answer without a question"}]},
        {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "  "}]},
        {"messages": [{"role": "robot", "content": "beep"}]},
        {"text": "no messages"},
        chat("Bye", "Goodbye!"),
    ])
    result = tdata.load_jsonl(path)
    assert [r["messages"][0]["content"] for r in result.rows] == ["Hi", "Bye"]
    assert result.rows[0]["category"] == "greeting"  # metadata kept
    problems = "\n".join(result.problems)
    assert "line 2: not valid JSON" in problems
    assert "line 3: the conversation does not end with an assistant reply" in problems
    assert "line 4: no user turn" in problems
    assert "line 5: message 2 (assistant) has empty content" in problems
    assert "line 6: message 1 has role 'robot'" in problems
    assert 'line 7: no "messages" field' in problems
    assert "2 rows loaded" in result.summary() and "6 skipped" in result.summary()


def test_empty_non_utf8_and_bom_files(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match="empty.jsonl: the file is empty"):
        tdata.load_jsonl(empty)
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(json.dumps(chat("café", "oui"), ensure_ascii=False).encode("utf-8").replace("é".encode(), b"\xe9"))
    with pytest.raises(ValueError, match="latin.jsonl: not UTF-8"):
        tdata.load_jsonl(latin)
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + json.dumps(chat("a", "b")).encode())
    assert len(tdata.load_jsonl(bom).rows) == 1


def test_save_never_overwrites(tmp_path):
    first = tdata.save_dataset([chat("a", "b")], "my set.jsonl", tmp_path)
    second = tdata.save_dataset([chat("c", "d")], "my set.jsonl", tmp_path)
    assert first.name == "my-set.jsonl" and second.name == "my-set-v2.jsonl"
    assert tdata.load_jsonl(first).rows[0]["messages"][0]["content"] == "a"
    assert "saved: my-set-v2" in tdata.available(tmp_path)
    assert not list(tmp_path.glob("*.tmp"))


def test_split_is_seeded_disjoint_and_keeps_a_training_row():
    rows = [chat(f"q{i}", f"a{i}") for i in range(26)]
    parts = tdata.splits(rows, 0.1, 0.2, seed=42)
    assert [len(parts[k]) for k in ("train", "validation", "test")] == [18, 3, 5]
    assert tdata.splits(rows, 0.1, 0.2, seed=42) == parts
    assert tdata.splits(rows, 0.0, 0.2, seed=42)["test"] == parts["test"]  # test rows don't move
    users = {k: {tdata.last_user_text(r) for r in v} for k, v in parts.items()}
    assert not users["train"] & users["test"] and not users["train"] & users["validation"]
    assert not users["validation"] & users["test"]
    assert sum(len(v) for v in parts.values()) == 26
    tiny = tdata.splits(rows[:2], 0.4, 0.4, seed=0)
    assert len(tiny["train"]) == 1  # never all held out


def test_a_stored_split_column_is_used_as_is():
    rows = [chat(f"q{i}", f"a{i}", split=("test" if i < 2 else "validation" if i < 3 else "train"))
            for i in range(6)]
    parts = tdata.splits(rows, 0.5, 0.3, seed=1)
    assert [len(parts[k]) for k in ("train", "validation", "test")] == [3, 1, 2]
