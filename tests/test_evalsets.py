import json

import pytest

from conftest import POLITE
from ratings import evalsets


def test_typed_lines_with_and_without_task():
    items = evalsets.from_lines("Email a professor | Ask a professor for feedback on a draft\n\nDecline an invitation")
    assert [i["task"] for i in items] == ["Email a professor", "Decline an invitation"]
    assert items[0]["text"] == "Ask a professor for feedback on a draft"
    assert [i["external_id"] for i in items] == ["1", "2"]
    with pytest.raises(ValueError, match="no prompt"):
        evalsets.from_lines("task only |")


def test_dataset_test_split_keeps_references():
    items = evalsets.from_dataset(POLITE, 0.1, 0.2, 42)
    assert len(items) == 5
    assert all(i["reference"] and i["messages"][-1]["role"] == "user" for i in items)


def test_csv_and_jsonl_uploads(tmp_path):
    csv_file = tmp_path / "set.csv"
    csv_file.write_text('id,task,prompt,reference,category\nq1,Refund,"I want my money back, now",,billing\n')
    (item,) = evalsets.from_file(csv_file)
    assert (item["external_id"], item["task"], item["text"], item["category"]) == (
        "q1", "Refund", "I want my money back, now", "billing")
    jsonl = tmp_path / "set.jsonl"
    jsonl.write_text(json.dumps({"prompt": "Hi", "reference": "Hello"}) + "\n" + json.dumps(
        {"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]}) + "\n")
    items = evalsets.from_file(jsonl)
    assert [i["reference"] for i in items] == ["Hello", "A."]


@pytest.mark.parametrize("name, content, message", [
    ("e.csv", "", "the file is empty"),
    ("n.csv", "question\nhi\n", "needs a 'prompt' column"),
    ("b.csv", "prompt\nok\n  \n", "line 3: the 'prompt' field is empty"),
    ("j.jsonl", '{"prompt": "ok"}\n{oops\n', "line 2: not valid JSON"),
    ("d.csv", "id,prompt\n1,a\n1,b\n", "the id '1' appears twice"),
])
def test_bad_files_name_the_problem(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        evalsets.from_file(path)


def test_keyword_rules_flag_by_priority_and_tag_the_model_prompt():
    rules = evalsets.parse_rules("escalate: cancel, angry, lawsuit priority 1\nbilling: refund, charge")
    assert rules[1].priority == 2
    item = evalsets.from_lines("I'm ANGRY and want a refund")[0]
    flagged = evalsets.apply_rules(item, rules, tag=True)
    assert flagged["flags"] == ["escalate", "billing"]
    assert flagged["messages"][-1]["content"].startswith("[ESCALATE] [BILLING] I'm ANGRY")
    assert flagged["text"] == "I'm ANGRY and want a refund"  # raters read the untagged prompt
    calm = evalsets.apply_rules(evalsets.from_lines("Cancellation policy?")[0], rules, tag=True)
    assert calm["flags"] == []  # whole words: 'cancellation' is not 'cancel'
    with pytest.raises(ValueError, match="rule line 1"):
        evalsets.parse_rules("no colon here")
