import json

import pytest

from helpers import POLITE, chat, write_jsonl
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


# --- versions ----------------------------------------------------------------------
def test_an_edit_makes_a_new_version_and_keeps_the_old(tmp_path):
    from tuner import editing

    first = tdata.save_version([chat("a", "b"), chat("c", "d")], "faq", tmp_path, note="imported")
    rows = tdata.load_jsonl(first).rows
    edited = editing.replace_row(rows, 0, chat("a", "better b"))
    second = tdata.save_version(editing.delete_row(edited, 1), tdata.label_of(first).split(": ")[1], tmp_path,
                                note="edited")
    assert (first.name, second.name) == ("faq.jsonl", "faq-v2.jsonl")
    assert tdata.load_jsonl(first).rows == [chat("a", "b"), chat("c", "d")]  # untouched
    assert tdata.load_jsonl(second).rows == [chat("a", "better b")]
    assert tdata.versions(second) == [first, second] and tdata.note_of(second) == "edited"
    for n in range(3, 11):
        tdata.save_version([chat("x", str(n))], "faq-v2", tmp_path)
    labels = [k for k in tdata.available(tmp_path) if k.startswith("saved: ")]
    assert labels == ["saved: faq"] + [f"saved: faq-v{n}" for n in range(2, 11)]  # v10 after v9
    assert tdata.label_of(tmp_path / "faq-v10.jsonl") == "saved: faq-v10"
    assert tdata.label_of(POLITE) == "starter: polite_assistant"
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*"))


def test_export_any_version_or_split_as_jsonl_or_csv():
    import csv
    import io

    rows = [chat("Hi, you", "Hello", split="train", category="greet"),
            chat("Bye", "Goodbye", split="test", category="farewell")]
    assert tdata.export_text(rows, "jsonl") == tdata.to_jsonl(rows)
    assert tdata.export_text(rows, "jsonl", "test") == tdata.to_jsonl(rows[1:])
    table = list(csv.DictReader(io.StringIO(tdata.export_text(rows, "csv", "train"))))
    assert table == [{"system": "", "user": "Hi, you", "assistant": "Hello",
                      "messages": json.dumps(rows[0]["messages"]), "split": "train", "category": "greet"}]
    with pytest.raises(ValueError, match="no stored split"):
        tdata.export_text([chat("a", "b")], "csv", "test")
    with pytest.raises(ValueError, match="unknown format"):
        tdata.export_text(rows, "xlsx")


# --- the row editor ----------------------------------------------------------------
def test_the_editor_builds_system_prompts_and_multi_turn_rows():
    from tuner import editing

    row, problems = editing.build_row("Be brief.", [["Hi", "Hello"], ["How are you?", "Fine."], ["", ""]],
                                      '{"category": "smalltalk"}')
    assert problems == []
    assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    assert row["category"] == "smalltalk"
    assert editing.editor_fields(row) == ("Be brief.", [["Hi", "Hello"], ["How are you?", "Fine."]],
                                          '{"category": "smalltalk"}')
    assert editing.build_row("", [["Hi", "Hello"]])[0] == chat("Hi", "Hello")


def test_the_editor_names_every_problem_before_saving():
    import pandas as pd

    from tuner import editing

    def problems(system, turns, meta=""):
        return editing.build_row(system, turns, meta)[1]

    assert problems("", [["Hi", "  "]]) == [
        "turn 1: the assistant reply is empty, so the conversation does not end with an assistant reply"]
    assert problems("", [["Hi", ""], ["More?", "Yes"]]) == ["turn 1: the assistant reply is empty"]
    assert problems("", [["", "An answer"]]) == ["turn 1: the user message is empty (each reply answers a user turn)"]
    assert problems("Sys", []) == ["add a turn: a user message and the assistant's reply"]
    assert problems("", [["q", "a"]], "{oops")[0].startswith("metadata: not valid JSON")
    assert problems("", [["q", "a"]], "[1]") == [
        'metadata: expected a JSON object such as {"category": "fact"}, got list']
    assert problems("", [["q", "a"]], '{"messages": 1}')[0].startswith('metadata: "messages"')
    # the grid arrives as a DataFrame with NaN in new cells
    frame = pd.DataFrame([["q", "a"], [None, float("nan")]], columns=editing.TURN_COLUMNS)
    assert editing.build_row("", frame.values.tolist())[0] == chat("q", "a")


def test_add_replace_delete_keep_a_stored_split_whole():
    from tuner import editing

    rows = [chat("a", "b", split="train"), chat("c", "d", split="test")]
    added = editing.add_row(rows, chat("e", "f"))
    assert added[-1]["split"] == "train" and tdata.has_stored_split(added) and len(rows) == 2
    assert editing.add_row([chat("a", "b")], chat("e", "f"))[-1] == chat("e", "f")
    replaced = editing.replace_row(rows, 1, chat("c", "better", split="test"))
    assert replaced[1]["messages"][1]["content"] == "better" and rows[1]["messages"][1]["content"] == "d"
    assert editing.delete_row(rows, 0) == rows[1:]
    with pytest.raises(ValueError, match="no row 3: the dataset has 2 rows"):
        editing.delete_row(rows, 2)


# --- owner-only bombs: a save past the size limit, a number too long ----------
def test_a_save_over_the_size_limit_is_refused_by_name_and_keeps_what_was_saved(tmp_path, monkeypatch):
    from tuner import importers as imp

    first = tdata.save_version([chat("a", "b")], "faq", tmp_path, note="first")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    monkeypatch.setattr(tdata, "MAX_FILE_BYTES", 1024)  # the limit a dataset file is read back under
    big = [chat("q" * 400, "a" * 400)] * 2  # 1.6 KB as JSONL
    message = r'the dataset "faq": 1\.7 KB is over the 1\.0 KB limit for a dataset file; cut it down or split it'
    with pytest.raises(ValueError, match=message):
        tdata.save_version(big, "faq", tmp_path)
    with pytest.raises(ValueError, match=message):
        tdata.save_dataset(big, "faq", tmp_path)
    result = imp.ImportResult(rows=big, source="big.jsonl", shape="messages")
    with pytest.raises(imp.ImportProblem, match=rf"^big\.jsonl: {message}[^.]*[^.]$"):
        imp.save_import(result, "faq", tmp_path)  # the Dataset tab adds ". Nothing was saved."
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # nothing lost, nothing half-written
    assert tdata.load_jsonl(first).rows == [chat("a", "b")]
    assert tdata.save_version([chat("c", "d")], "faq", tmp_path).name == "faq-v2.jsonl"  # under it: saved


def test_the_editor_names_metadata_with_a_number_too_long_or_nested_too_deeply():
    from tuner import editing

    assert editing.build_row("", [["q", "a"]], '{"id": ' + "7" * 5000 + "}")[1] == [
        "metadata: a number 5,000 digits long is too long to read (at most 4,300 digits)"]
    assert editing.build_row("", [["q", "a"]], '{"a": ' + "[" * 100_000)[1] == [
        "metadata: nested too deeply to read"]
