import json

import pytest

from helpers import POLITE
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


# --- the form's defaults ----------------------------------------------------------------------
def _run(tmp_path, dataset, held_out=()):
    folder = tmp_path / "runs" / "r1"
    folder.mkdir(parents=True, exist_ok=True)
    if held_out:
        (folder / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in held_out))
    return {"run_id": "r1", "path": str(folder), "config": {"dataset": str(dataset)}}


def _reply(words: int) -> dict:
    return {"messages": [{"role": "user", "content": "Write"}, {"role": "assistant", "content": "word " * words}]}


def test_the_default_cap_of_typed_and_uploaded_prompts_is_room_for_references_else_training_replies(tmp_path):
    from tuner.recipes import max_new_tokens_for

    dataset = tmp_path / "long.jsonl"
    dataset.write_text("".join(json.dumps(_reply(120)) + "\n" for _ in range(4)))
    run = _run(tmp_path, dataset)
    typed = evalsets.from_lines("Write to a professor\nDecline an invitation")
    tokens, whence = evalsets.default_max_new_tokens(typed, [run])
    assert tokens == max_new_tokens_for(["word " * 120]) and tokens > 160  # 120 words do not fit 48 tokens
    assert whence == "room for run r1's training replies"
    # an uploaded file with references: room for its references
    upload = tmp_path / "p.csv"
    upload.write_text("prompt,reference\nHi,Hello there\nBye," + "word " * 60 + "\n")
    tokens, whence = evalsets.default_max_new_tokens(evalsets.from_file(upload), [run])
    assert tokens == max_new_tokens_for(["Hello there", "word " * 60]) and whence == "room for the 2 reference answers"
    # the run's dataset gone: its held-out rows, kept in its folder, are the same data
    gone = _run(tmp_path, tmp_path / "deleted.jsonl", held_out=[_reply(90)])
    assert evalsets.default_max_new_tokens(typed, [gone])[0] == max_new_tokens_for(["word " * 90])
    assert evalsets.default_max_new_tokens(typed, [])[0] is None  # the engine's default then


def test_choosing_a_run_fills_the_checks_cap_and_settings_from_its_recipe_unless_edited_by_hand(tmp_path):
    from tuner.paths import STARTER_DATASETS

    email = {"run_id": "e", "config": {"dataset": str(STARTER_DATASETS / "formal_email.jsonl")}}
    faq = {"run_id": "f", "config": {"dataset": str(tmp_path / "company_faq-v2.jsonl")}}  # a saved version
    fill = evalsets.recipe_fill(email)
    assert fill.checks.splitlines()[0] == "starts with: Subject:" and fill.max_new_tokens == 240
    assert fill.note == ("Checks, cap, temperature, repetition penalty and batch size from the formal_email recipe "
                         "(5 checks, up to 240 new tokens, greedy, repetition penalty 1.05, 32 rows a batch).")
    # the settings the recipe was measured with, not the engine's defaults (1.1, 20 rows)
    assert fill.settings == {"temperature": 0.0, "repetition_penalty": 1.05, "batch_size": 32}
    # the FAQ run after the email one: the email checks go, the FAQ's own cap comes
    fill = evalsets.recipe_fill(faq)
    assert (fill.checks, fill.max_new_tokens, fill.recipe) == ("", 48, "company_faq")
    assert fill.note.startswith("Checks, cap, temperature, repetition penalty and batch size from the company_faq recipe")
    assert fill.settings["repetition_penalty"] == 1.0
    # what the owner changed by hand stays, and the line says so
    fill = evalsets.recipe_fill(faq, kept={"cap", "repetition_penalty"})
    assert (fill.checks, fill.max_new_tokens) == ("", None) and "repetition_penalty" not in fill.settings
    assert fill.note == ("Checks, temperature and batch size from the company_faq recipe (no checks, greedy, "
                         "32 rows a batch); your cap and repetition penalty kept (edited by hand).")
    fill = evalsets.recipe_fill(email, kept=set(evalsets.FORM_FIELDS))
    assert (fill.checks, fill.max_new_tokens) == (None, None) and "not applied" in fill.note
    # no recipe: no checks, and the cap from the references (0 in the form)
    other = {"run_id": "o", "config": {"dataset": str(tmp_path / "mine.jsonl")}}
    fill = evalsets.recipe_fill(other)
    assert (fill.checks, fill.max_new_tokens, fill.recipe) == ("", 0, None)
    assert fill.note.startswith("No recipe for mine.jsonl: no checks")
    # and the engine's default settings: nothing of the last run's recipe stays behind unseen
    assert fill.settings == {"temperature": 0.0, "repetition_penalty": 1.1, "batch_size": 20}
    assert "the default temperature, repetition penalty and batch size" in fill.note
    bad = tmp_path / "broken.recipe.json"
    bad.write_text("{not json")
    fill = evalsets.recipe_fill({"run_id": "b", "config": {"dataset": str(tmp_path / "broken.jsonl")}})
    assert fill.note.startswith("⚠️ broken.recipe.json: not valid JSON") and fill.checks == ""


def test_a_recipe_silent_on_a_setting_gives_the_engines_default_not_the_last_runs(tmp_path):
    """A recipe that names only a cap: the temperature, repetition penalty and batch size go back to
    the engine's defaults (the form may still hold the last run's recipe's), and the line says so."""
    import json

    from tuner.paths import STARTER_DATASETS

    recipe = json.loads((STARTER_DATASETS / "company_faq.recipe.json").read_text())
    recipe["generate"] = {"max_new_tokens": 50}
    (tmp_path / "short.recipe.json").write_text(json.dumps(recipe))
    fill = evalsets.recipe_fill({"run_id": "s", "config": {"dataset": str(tmp_path / "short.jsonl")}})
    assert fill.max_new_tokens == 50
    assert fill.settings == {"temperature": 0.0, "repetition_penalty": 1.1, "batch_size": 20}
    assert fill.note.endswith("the default temperature, repetition penalty and batch size.")
