"""Importing files and Hub datasets: every shape, every bad input."""

import json
import re
import time

import pytest

from helpers import chat, write_jsonl
from tuner import data as tdata
from tuner import importers as imp
from tuner.importers import ImportProblem, Mapping


def turns(row):
    return [(m["role"], m["content"]) for m in row["messages"]]


def write_csv(path, text):
    path.write_text(text, encoding="utf-8")
    return path


# --- shapes ------------------------------------------------------------------------
def test_messages_jsonl_keeps_metadata_and_reports_bad_lines(tmp_path):
    path = write_jsonl(tmp_path / "chat.jsonl", [
        chat("Hi", "Hello!", category="greeting"),
        "{oops",
        {"messages": [{"role": "user", "content": "No reply"}]},
        {"text": "not a conversation"},
        [1, 2],
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q1"},
                      {"role": "assistant", "content": "A1"}, {"role": "user", "content": "Q2"},
                      {"role": "assistant", "content": "A2"}], "difficulty": "hard"},
    ])
    result = imp.import_file(path)
    assert result.shape == "messages"
    assert [r.get("category") or r.get("difficulty") for r in result.rows] == ["greeting", "hard"]
    assert turns(result.rows[1])[0] == ("system", "Be brief.") and len(result.rows[1]["messages"]) == 5
    assert result.problems == [
        "line 2: not valid JSON (Expecting property name enclosed in double quotes)",
        "line 3: the conversation does not end with an assistant reply",
        'line 4: no "messages" field',
        "line 5: expected a JSON object, got list",
    ]
    summary = result.summary()
    assert summary.startswith("2 rows imported from chat.jsonl (messages format), 4 skipped: line 2: not valid JSON")
    assert summary.endswith(", …")


def test_alpaca_json_list_joins_instruction_and_input(tmp_path):
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps([
        {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"},
        {"instruction": "Name a colour.", "input": "", "output": "Blue", "source": "x"},
        {"instruction": "Say nothing.", "input": "", "output": ""},
        "not an object",
    ]), encoding="utf-8")
    result = imp.import_file(path)
    assert result.shape == "alpaca"
    assert turns(result.rows[0]) == [("user", "Translate to French.\n\nGood morning"), ("assistant", "Bonjour")]
    assert turns(result.rows[1])[0] == ("user", "Name a colour.") and result.rows[1]["source"] == "x"
    assert "input" not in result.rows[1]  # a used column is not metadata
    assert result.problems == ['item 3: "output" (assistant reply) is empty',
                               "item 4: expected a JSON object, got str"]


def test_dolly_jsonl_appends_context_and_keeps_category(tmp_path):
    path = write_jsonl(tmp_path / "dolly.jsonl", [
        {"instruction": "Who wrote it?", "context": "Hamlet was written by Shakespeare.",
         "response": "Shakespeare.", "category": "closed_qa"},
        {"instruction": "Give a tip.", "context": "", "response": "Sleep well.", "category": "brainstorming"},
        {"instruction": "", "context": "", "response": "An answer to nothing", "category": "open_qa"},
        {"instruction": "Q", "context": "", "response": 42, "category": "open_qa"},
        {"instruction": "Q", "context": "", "response": ["a", "list"], "category": "open_qa"},
    ])
    result = imp.import_file(path)
    assert result.shape == "dolly"
    assert turns(result.rows[0])[0] == ("user", "Who wrote it?\n\nHamlet was written by Shakespeare.")
    assert [r["category"] for r in result.rows] == ["closed_qa", "brainstorming", "open_qa"]
    assert turns(result.rows[2])[1] == ("assistant", "42")  # a number is text enough
    assert result.problems == ['line 3: "instruction" (user turn) is empty',
                               'line 5: "response" (assistant reply) is ["a", "list"], a list; expected text']


def test_prompt_completion_csv_and_conversational_jsonl(tmp_path):
    path = write_csv(tmp_path / "pc.csv", 'prompt,completion,lang\n"Hello, who are you?",I am a bot.,en\n'
                                          '"A multi\nline prompt",Yes,en\n')
    result = imp.import_file(path)
    assert result.shape == "prompt_completion"
    assert turns(result.rows[1]) == [("user", "A multi\nline prompt"), ("assistant", "Yes")]
    assert result.rows[0]["lang"] == "en"
    trl = write_jsonl(tmp_path / "trl.jsonl", [{
        "prompt": [{"role": "user", "content": "Hi"}], "completion": [{"role": "assistant", "content": "Hey"}]}])
    assert turns(imp.import_file(trl).rows[0]) == [("user", "Hi"), ("assistant", "Hey")]


def test_sharegpt_with_system_and_unknown_speaker(tmp_path):
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps({"data": [
        {"id": "a", "conversations": [{"from": "system", "value": "Be kind."}, {"from": "human", "value": "Hi"},
                                      {"from": "gpt", "value": "Hello"}, {"from": "human", "value": "Bye"},
                                      {"from": "gpt", "value": "Goodbye"}]},
        {"id": "b", "conversations": [{"from": "alien", "value": "?"}, {"from": "gpt", "value": "!"}]},
        {"id": "c", "conversations": [{"from": "human", "value": "Only me"}]},
    ]}), encoding="utf-8")
    result = imp.import_file(path)
    assert result.shape == "sharegpt"
    assert turns(result.rows[0]) == [("system", "Be kind."), ("user", "Hi"), ("assistant", "Hello"),
                                     ("user", "Bye"), ("assistant", "Goodbye")]
    assert result.rows[0]["id"] == "a" and "conversations" not in result.rows[0]
    assert result.problems == ['item 2: "conversations" turn 1 has from "alien"; expected one of human, gpt, system',
                               "item 3: the conversation does not end with an assistant reply"]


def test_question_answer_csv_matches_columns_in_any_case(tmp_path):
    path = write_csv(tmp_path / "faq.csv", "Question;Answer;difficulty;category\n"
                                           "When do you open?;At nine.;easy;hours\n"
                                           "Who founded Acme?;;hard;history\n")
    result = imp.import_file(path)
    assert result.shape == "question_answer"
    assert result.rows == [{"messages": [{"role": "user", "content": "When do you open?"},
                                         {"role": "assistant", "content": "At nine."}],
                            "difficulty": "easy", "category": "hours"}]
    assert result.problems == ['line 3: "Answer" (assistant reply) is empty']


def test_custom_mapping_for_support_csv(tmp_path):
    path = write_csv(tmp_path / "support.csv",
                     "ticket,customer_message,agent_reply,brand,tone\n"
                     "1,My order is late,Sorry! It ships today.,Acme,calm\n"
                     "2,Refund please,Done.,Globex,calm\n")
    table = imp.read_file(path)
    assert imp.detect_shape(table.columns) is None
    with pytest.raises(ImportProblem, match=r"customer_message.*match no known shape"):
        imp.convert(table)
    guess = imp.suggest_mapping(table.columns)
    assert (guess.user, guess.assistant) == ("customer_message", "agent_reply")
    result = imp.convert(table, mapping=Mapping("customer_message", "agent_reply", metadata=("brand",)))
    assert result.shape == "mapping" and "column mapping" in result.summary()
    assert result.rows[0] == {"messages": [{"role": "user", "content": "My order is late"},
                                           {"role": "assistant", "content": "Sorry! It ships today."}],
                              "brand": "Acme"}
    every = imp.convert(table, mapping=Mapping("customer_message", "agent_reply", system="tone"))
    assert turns(every.rows[0])[0] == ("system", "calm") and set(every.rows[0]) == {"messages", "ticket", "brand"}


def test_parquet_and_csv_round_trip(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "qa.parquet"
    pq.write_table(pa.Table.from_pylist([{"question": "Q1", "answer": "A1", "level": 1},
                                         {"question": "Q2", "answer": None, "level": 2}]), path)
    result = imp.import_file(path)
    assert turns(result.rows[0]) == [("user", "Q1"), ("assistant", "A1")] and result.rows[0]["level"] == 1
    assert result.problems == ['row 2: "answer" (assistant reply) is empty']
    # an exported CSV imports back to the same rows
    rows = [chat("Hi, there", "Hello\n\"friend\"", category="x"),
            {"messages": [{"role": "system", "content": "S"}, *chat("a", "b")["messages"]], "category": "y"}]
    csv_file = tmp_path / "export.csv"
    csv_file.write_text(tdata.to_csv(rows), encoding="utf-8")
    assert imp.import_file(csv_file).rows == rows


def test_hub_id_fails_fast_offline_and_loads_through_datasets(monkeypatch):
    start = time.perf_counter()
    with pytest.raises(ImportProblem, match="Hub cannot be reached.*upload it"):
        imp.read_hub("databricks/databricks-dolly-15k", reachable=lambda: False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ImportProblem, match="Hub cannot be reached"):
        imp.read_hub("databricks/databricks-dolly-15k")  # the real check
    assert time.perf_counter() - start < 10

    import datasets

    def load(name, config, split):
        assert (name, config, split) == ("org/qa", None, "train")
        return datasets.Dataset.from_list([{"question": "Q", "answer": "A"}])

    table = imp.read_hub("org/qa", reachable=lambda: True, load=load)
    assert imp.convert(table).rows == [chat("Q", "A")] and table.source == "org/qa (train)"

    def broken(*args, **kwargs):
        raise FileNotFoundError("Dataset 'org/nope' doesn't exist on the Hub")

    with pytest.raises(ImportProblem, match="org/nope' could not be loaded: FileNotFoundError"):
        imp.read_hub("org/nope", reachable=lambda: True, load=broken)


# --- bad input ---------------------------------------------------------------------
EMPTY = [("a.jsonl", ""), ("b.csv", "\n \n"), ("c.json", "[]"), ("d.csv", "question,answer\n")]
REFUSED = [
    # (file name, its bytes, what the message must say)
    *[(name, content.encode(), rf"{name}: the file (is empty|has no rows|has a header)") for name, content in EMPTY],
    ("latin.csv", "question,answer\nCafé?,Oui\n".encode("latin-1"),
     r"latin.csv: not UTF-8 text \(byte 0xE9 at offset 19, line 2\)"),
    ("wide.csv", "question,answer\nQ,A\n".encode("utf-16"), "wide.csv: the file is UTF-16 .*save it as UTF-8"),
    ("notes.txt", b"hello", "notes.txt: files of type '.txt' cannot be imported"),
    ("fake.parquet", b"not parquet at all", "fake.parquet: not a readable Parquet file"),
    ("broken.json", b'[{"question": "Q", "answer": ]', r"broken.json: not valid JSON \(line 1, column 30"),
]


@pytest.mark.parametrize("name, content, message", REFUSED, ids=[r[0] for r in REFUSED])
def test_empty_not_utf8_unsupported_and_damaged_files_are_refused_by_name(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImportProblem, match=message):
        imp.import_file(path)


def test_a_utf8_byte_order_mark_is_dropped_and_said(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbfquestion,answer\nQ,A\n")
    result = imp.import_file(path)
    assert result.rows == [chat("Q", "A")]  # the first column is "question", not "\ufeffquestion"
    assert "byte-order mark" in result.notes[0]


def test_over_the_size_limit(tmp_path):
    path = write_jsonl(tmp_path / "big.jsonl", [chat("q" * 500, "a")] * 3)
    with pytest.raises(ImportProblem, match=r"big.jsonl: 1.7 KB is over the 1.0 KB limit"):
        imp.import_file(path, max_bytes=1024)
    assert len(imp.import_file(path).rows) == 3


def test_a_missing_mapped_column_is_named(tmp_path):
    path = write_csv(tmp_path / "s.csv", "msg,reply\nHi,Hello\n")
    with pytest.raises(ImportProblem, match=r's.csv: the mapping names column "answer" for the assistant reply, '
                                            r"but there is no such column; the columns are: msg, reply"):
        imp.import_file(path, mapping=Mapping("msg", "answer"))
    with pytest.raises(ImportProblem, match=r"the Alpaca format needs the column\(s\) instruction, output"):
        imp.import_file(path, shape="alpaca")


def test_csv_rows_with_the_wrong_number_of_fields_are_skipped_by_line(tmp_path):
    path = write_csv(tmp_path / "ragged.csv", "question,answer\nQ1,A1\nQ2,A2,extra\n\n"
                                              '"Q3\nacross lines",A3\nQ4\n')
    result = imp.import_file(path)
    assert [turns(r)[0][1] for r in result.rows] == ["Q1", "Q3\nacross lines"]
    assert result.problems == ["line 3: 3 fields, but the header has 2 (a quote not closed, or a stray delimiter?)",
                               "line 7: 1 fields, but the header has 2 (a quote not closed, or a stray delimiter?)"]


def test_a_failed_import_leaves_saved_datasets_untouched(tmp_path):
    folder = tmp_path / "saved"
    folder.mkdir()
    first = imp.save_import(imp.import_file(write_jsonl(tmp_path / "faq.jsonl", [chat("Q", "A")])), "faq", folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    (tmp_path / "faq.csv").write_bytes(b"\xff\xfequestion")
    with pytest.raises(ImportProblem):
        imp.import_file(tmp_path / "faq.csv")
    only_bad = imp.import_file(write_jsonl(tmp_path / "bad.jsonl", ["{nope"]))
    with pytest.raises(ImportProblem, match="no valid rows, so nothing was saved"):
        imp.save_import(only_bad, "faq", folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    again = imp.save_import(imp.import_file(tmp_path / "faq.jsonl"), "faq", folder)
    assert (first.name, again.name) == ("faq.jsonl", "faq-v2.jsonl")
    assert "imported: 1 rows imported from faq.jsonl" in tdata.note_of(again)


# --- a first guess for columns no shape knows --------------------------------------
@pytest.mark.parametrize("columns, user, assistant, system", [
    (["text", "response"], "text", "response", None),
    (["id", "Text", "Response", "label"], "Text", "Response", None),
    (["input", "target"], "input", "target", None),
    (["query", "reply", "context"], "query", "reply", "context"),
    (["message", "answer", "system"], "message", "answer", "system"),
    (["Question", "Completion"], "Question", "Completion", None),
    (["user_id", "customer_message", "agent_reply"], "customer_message", "agent_reply", None),
])
def test_unknown_columns_get_a_first_guess_from_common_names(columns, user, assistant, system):
    assert imp.detect_shape(columns) is None
    guess = imp.suggest_mapping(columns)
    assert (guess.user, guess.assistant, guess.system) == (user, assistant, system)


def test_a_text_response_csv_imports_with_the_guessed_mapping(tmp_path):
    path = write_csv(tmp_path / "pairs.csv", "text,response,label\nWhere is my parcel?,On its way.,shipping\n")
    table = imp.read_file(path)
    with pytest.raises(ImportProblem, match="match no known shape"):
        imp.convert(table)
    result = imp.convert(table, mapping=imp.suggest_mapping(table.columns))
    assert turns(result.rows[0]) == [("user", "Where is my parcel?"), ("assistant", "On its way.")]
    assert result.rows[0]["label"] == "shipping"
    assert imp.suggest_mapping(["a", "b"]) is None  # nothing to guess from: the pickers stay empty


# --- owner-only bombs: a small file that decodes huge, a number too long ------------------------
ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent
IMPORT_IN_A_CHILD = """
import pathlib, resource, sys
sys.path.insert(0, sys.argv[2])
import pyarrow.parquet
from tuner import importers as imp
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    result = imp.import_file(pathlib.Path(sys.argv[1]))
    print("imported", len(result.rows))
except imp.ImportProblem as exc:
    print("refused", exc)
print("grew", (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


def import_in_a_child(path):
    """(what the import said, how many MB its peak memory grew by), from a fresh process:
    arrow's memory is not Python's, so tracemalloc cannot see it, but the peak RSS does."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", IMPORT_IN_A_CHILD, str(path), str(ROOT)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    said, grew = done.stdout.strip().rsplit("\n", 1)
    return said, int(grew.split()[1])


def long_string_parquet(path):
    # one 1 MB string, dictionary-encoded: stored once, it decodes once per row (1,000 rows: 1 GB)
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = 1000
    question = pa.DictionaryArray.from_arrays(pa.array([0] * rows, pa.int32()), pa.array(["q" * 2**20]))
    pq.write_table(pa.table({"question": question, "answer": ["A"] * rows}), path)


def many_values_parquet(path):
    # 3 rows with a list of 7 million nulls each: 1 KB on disk, 21 million values once read
    import pyarrow as pa
    import pyarrow.parquet as pq

    nulls = pa.ListArray.from_arrays(pa.array([0, 7_000_000, 14_000_000, 21_000_000], pa.int32()),
                                     pa.nulls(21_000_000, pa.int64()))
    pq.write_table(pa.table({"question": ["Q1", "Q2", "Q3"], "answer": ["A1", "A2", "A3"], "counts": nulls}), path)


def delta_string_parquet(path):
    # the same string, prefix-encoded (DELTA_BYTE_ARRAY): each row stores "as the last one", read as itself
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = 120
    pq.write_table(pa.table({"question": ["q" * 2**20] * rows, "answer": ["A"] * rows}), path,
                   use_dictionary=False, column_encoding={"question": "DELTA_BYTE_ARRAY"})


@pytest.mark.parametrize("make, message", [
    (long_string_parquet, r"1,000 rows decode to 1000\.\d MB"),
    (delta_string_parquet, r"120 rows decode to more than \d+\.\d MB"),  # counting stops there
    (many_values_parquet, r"3 rows hold 21,000,006 values, which decode to at least 320\.\d MB"),
], ids=["one-long-string-repeated", "one-long-string-prefix-encoded", "millions-of-values"])
def test_a_small_parquet_file_that_decodes_huge_is_refused_before_it_is_read(tmp_path, make, message):
    path = tmp_path / "big.parquet"
    make(path)
    assert path.stat().st_size < 300 * 1024  # small on disk…
    said, grew = import_in_a_child(path)
    # … refused by name, with the limit, and without decoding it
    assert re.fullmatch(rf"refused big\.parquet: {message}, over the 50\.0 MB limit for a dataset file; "
                        r"cut it down or split it first", said), said
    assert grew < 100, f"the refused import took {grew} MB more memory"


def test_a_parquet_file_is_read_only_as_far_as_the_row_limit(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "chat.parquet"
    rows = [{"messages": [{"role": "user", "content": f"Q{i}"}, {"role": "assistant", "content": f"A{i}"}],
             "topic.name": "x" * (i % 3)} for i in range(12)]
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=4)
    assert imp.import_file(path).rows == rows  # nested columns, and a dot in a column's name
    monkeypatch.setattr(imp, "MAX_ROWS", 5)
    table = imp.read_file(path)
    assert table.records == rows[:5] and table.numbers == [1, 2, 3, 4, 5]
    assert table.notes == ["only the first 5 of the 12 rows of chat.parquet were read (the import limit)"]


def test_prefix_encoded_strings_inside_a_list_are_refused_by_column(tmp_path):
    # their decoded size is known only by decoding them, and a list may hold any number of them
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "spark.parquet"
    pq.write_table(pa.Table.from_pylist([chat("Q", "A")] * 3), path, use_dictionary=False,
                   column_encoding={"messages.list.element.content": "DELTA_BYTE_ARRAY"})
    with pytest.raises(ImportProblem, match=r"spark.parquet: the column messages.list.element.content is a list "
                                            r"of DELTA_BYTE_ARRAY-encoded strings"):
        imp.import_file(path)


DIGITS = "7" * 5000  # past Python's 4,300-digit limit on reading an integer


def test_a_number_too_long_to_read_is_a_named_bad_line_in_jsonl_and_json(tmp_path):
    good = [chat("Q1", "A1"), chat("Q2", "A2")]
    line = json.dumps(chat("Q", "A"))[:-1] + f', "id": {DIGITS}}}'
    path = tmp_path / "long.jsonl"
    path.write_text("\n".join([json.dumps(good[0]), line, json.dumps(good[1])]) + "\n", encoding="utf-8")
    result = imp.import_file(path)
    assert result.rows == good
    assert result.problems == ["line 2: a number 5,000 digits long is too long to read (at most 4,300 digits)"]
    assert tdata.load_jsonl(path).problems == result.problems  # the dataset loader says the same

    listed = tmp_path / "long.json"
    listed.write_text(f"[{json.dumps(good[0])},\n{line},\n{json.dumps(good[1])}]", encoding="utf-8")
    result = imp.import_file(listed)
    assert result.rows == good
    assert result.problems == ["item 2: a number 5,000 digits long is too long to read (at most 4,300 digits)"]
    # one object per line under a .json name, and a file that is nothing but the number
    listed.write_text("\n".join([json.dumps(good[0]), line, json.dumps(good[1])]), encoding="utf-8")
    assert imp.import_file(listed).problems == [
        "line 2: a number 5,000 digits long is too long to read (at most 4,300 digits)"]
    listed.write_text("\n".join([line, json.dumps(good[1])]), encoding="utf-8")  # the long number first
    assert imp.import_file(listed).problems == [
        "line 1: a number 5,000 digits long is too long to read (at most 4,300 digits)"]
    listed.write_text(DIGITS, encoding="utf-8")
    with pytest.raises(ImportProblem, match=r"long.json: a number 5,000 digits long is too long to read"):
        imp.import_file(listed)


def test_a_conversation_cell_with_a_long_number_or_deep_nesting_is_a_named_bad_line(tmp_path):
    import csv

    cells = [json.dumps(chat("Q1", "A1")["messages"]), f'[{{"role": "user", "content": {DIGITS}}}]',
             "[" * 100_000, json.dumps(chat("Q2", "A2")["messages"])]
    path = tmp_path / "chat.csv"
    with open(path, "w", encoding="utf-8", newline="") as fh:
        csv.writer(fh).writerows([["messages"], *([c] for c in cells)])
    result = imp.import_file(path)
    assert result.rows == [chat("Q1", "A1"), chat("Q2", "A2")]
    assert result.problems == [
        'line 3: "messages": a number 5,000 digits long is too long to read (at most 4,300 digits)',
        'line 4: "messages" is nested too deeply to read']
