"""What the screens say, called through their own handlers:
when raters learn which model wrote which, a prompt shown once when it has no task, a
saved version named once, the Export run list with names, the per-difficulty table
headed "difficulty", the dataset picker's remembered choice and a new dataset's empty
row editor."""

from __future__ import annotations

import json
import random
import re
import shutil

import gradio as gr

from helpers import chat, open_evaluation, write_jsonl
from ratings import evalsets, preferences, reports, tables
from ratings.generation import generate_evaluation, variants_for
from ratings.store import Store
from tuner import data as tdata
from tuner import editing
from tuner.generate import GenSettings, Generator
from tuner.prompts import prompt_item

VARIANTS = [{"name": "base", "label": "Base model", "kind": "base"},
            {"name": "run-1", "label": "LoRA run", "kind": "lora"}]


def _fn(demo: gr.Blocks, name: str):
    """A handler of `demo` by its api name, else its function's name."""
    return next(f.fn for f in demo.fns.values() if name in (f.api_name, f.name))


def _by_id(out: dict) -> dict:
    return {getattr(component, "elem_id", None): value for component, value in out.items()}


# --- /rate ---------------------------------------------------------------------------------------
def test_a_rater_is_told_when_the_models_are_revealed_as_the_evaluation_says(tmp_path):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from tuner.ui import rate

    store = Store(tmp_path / "r.db")
    prompts = [{"text": f"Write note {i}."} for i in range(3)]
    reply = "Reply {letter} to {text}"
    at_end = open_evaluation(store, "at the end", "m", prompts, VARIANTS, reply=reply, reveal="end")
    each = open_evaluation(store, "after each", "m", prompts, VARIANTS, reply=reply, reveal="each")
    with gr.Blocks() as demo:
        rate.raters_page()
    # the page's own text promises no moment: the evaluation, picked on the page, decides
    intro = " ".join(str(b.value) for b in demo.blocks.values() if isinstance(b, gr.Markdown) and b.value)
    assert "after you submit" not in intro
    assert "after each pair or after your last pair" in intro
    api = FastAPI()
    rate.rater_api(api, store, random.Random(0))
    with TestClient(api) as ana, TestClient(api) as bo:
        told = ana.post("/tuner/rate/join", json={"evaluation": at_end, "name": "ana", "code": ""}).json()["progress"]
        assert "pair 1 of 3" in told and "after your last pair" in told and "after each pair" not in told
        told = bo.post("/tuner/rate/join", json={"evaluation": each, "name": "bo", "code": ""}).json()["progress"]
        assert "pair 1 of 3" in told and "after each pair you submit" in told and "last pair" not in told
        # and what Submit says holds to it: nothing revealed before the last pair of an 'end' evaluation
        pair = store.next_pair(at_end, "ana", random.Random(0))
        said = ana.post("/tuner/rate/submit", json={"evaluation": at_end, "assignment": pair["assignment_id"],
                                                    "a": 4, "b": 2, "comment": ""}).json()["reveal"]
        assert "shown after your last pair" in said


def test_a_prompt_without_a_task_is_shown_once(tmp_path):
    from tuner.ui.rate import _heading

    store = Store(tmp_path / "r.db")
    long_prompt = "Write a short and polite note to my neighbour about the noise tonight."
    items = [prompt_item("Say hi to my friend.", 1), prompt_item(long_prompt, 2),
             prompt_item("I am angry, cancel my order.", 3, task="Refund")]
    eval_id = open_evaluation(store, "tasks", "m", items, VARIANTS, reply="Reply {letter} to {text}")
    shown = {}
    while (pair := store.next_pair(eval_id, "ana", random.Random(0))) is not None:
        shown[pair["prompt"]] = _heading(pair)
        store.rate_pair(pair["assignment_id"], "ana", 3, 3)
    # no task given: the task is the prompt's first words, which would only repeat it
    assert shown["Say hi to my friend."] == "**Prompt:** Say hi to my friend."
    assert shown[long_prompt] == f"**Prompt:** {long_prompt}"
    assert shown["I am angry, cancel my order."] == "**Task:** Refund\n\n**Prompt:** I am angry, cancel my order."


# --- corrections into a dataset --------------------------------------------------------------------
def test_corrections_saved_into_a_dataset_name_the_version_once(tmp_path):
    from tuner.ui.corrections import corrections_section

    datasets = tmp_path / "datasets"
    datasets.mkdir()
    write_jsonl(datasets / "mine.jsonl", [chat("Old", "Reply")])
    store = Store(tmp_path / "r.db")
    eval_id = open_evaluation(store, "e", "m", ["Write to the professor."], VARIANTS, reply="Reply {letter} to {text}")
    pair = store.next_pair(eval_id, "ana", random.Random(0))
    store.rate_pair(pair["assignment_id"], "ana", 1, 2)
    low = store.replies(eval_id).iloc[0]
    preferences.correct(store, int(low["reply_id"]), "Dear Professor, I am writing about the deadline.")
    with gr.Blocks() as demo:
        pick = gr.Dropdown([], allow_custom_value=True)
        corrections_section(store, datasets, pick)
    note = _by_id(_fn(demo, "on_to_dataset")(eval_id, "saved: mine"))["correct-note"]
    assert "Saved saved" not in note and note.count("saved: mine-v2") == 1, note
    assert "2 rows**, 1 of them corrections, saved as `mine-v2.jsonl` (saved: mine-v2)" in note
    assert len(tdata.load_jsonl(datasets / "mine-v2.jsonl").rows) == 2


# --- the Export run list ---------------------------------------------------------------------------
def test_the_export_run_list_shows_each_runs_name_beside_its_id(trained_run, tmp_path):
    from tuner.paths import Layout
    from tuner.runs import RunManager
    from tuner.ui import export as ui_export

    source = trained_run.parent
    runs_dir = tmp_path / "runs"
    named = runs_dir / source.name
    shutil.copytree(source, named, ignore=shutil.ignore_patterns("checkpoints"))
    record = json.loads((named / "run.json").read_text())
    record["config"]["run_name"] = "polite bot"
    (named / "run.json").write_text(json.dumps(record))
    with gr.Blocks():
        fill, _run, _out = ui_export.export_panel(RunManager(runs_dir, tmp_path / "models"), Layout(tmp_path / "home"))
    [(label, value)] = fill(None)["choices"]
    assert value == source.name  # the handlers still get the id
    assert label.startswith(f"polite bot · {source.name}"), label
    assert fill(source.name)["value"] == source.name


# --- the per-difficulty table ----------------------------------------------------------------------
def test_the_per_difficulty_tables_are_headed_difficulty(tiny_llama, trained_run, tmp_path):
    run = {"run_id": "run-1", "path": str(trained_run.parent),
           "config": {"base_model": str(tiny_llama), "method": "lora"}}
    base_model, variants = variants_for([run])
    rows = [chat(f"What is {i} plus {i}?", str(2 * i), difficulty="easy" if i % 2 else "hard", split="test")
            for i in range(1, 5)]
    items = evalsets.from_dataset(write_jsonl(tmp_path / "qa.jsonl", rows), 0.0, 1.0, 0)
    store = Store(tmp_path / "r.db")
    eval_id = generate_evaluation(store, Generator(tmp_path / "models"), "qa", base_model, items, variants,
                                  GenSettings(max_new_tokens=3))
    rng = random.Random(0)
    for rater in ("ana", "bo"):
        while (pair := store.next_pair(eval_id, rater, rng)) is not None:
            store.rate_pair(pair["assignment_id"], rater, 4, 2)
    results = tables.gather(store, eval_id)
    assert list(results.automatic_by.columns)[0] == "difficulty"
    assert set(results.automatic_by["difficulty"]) == {"easy", "hard"}
    assert "difficulty" in results.breakdowns and "category" not in results.breakdowns
    assert list(results.breakdowns["difficulty"].columns)[0] == "difficulty"
    assert "### By difficulty" in reports.report_markdown(results)
    # a set with categories keeps "category"
    typed = [prompt_item(f"Say hi {i}", i, category="greeting") for i in range(1, 3)]
    other = generate_evaluation(store, Generator(tmp_path / "models"), "typed", base_model, typed, variants,
                                GenSettings(max_new_tokens=3))
    assert list(tables.gather(store, other).automatic_by.columns)[0] == "category"


# --- the Dataset tab -------------------------------------------------------------------------------
def test_the_dataset_picker_reopens_the_version_chosen_last(tmp_path):
    from tuner.ui.dataset import DEFAULT_DATASET, LastChoice, refresh_datasets_fn

    datasets = tmp_path / "datasets"
    datasets.mkdir()
    write_jsonl(datasets / "mine.jsonl", [chat("Hi", "Hello!")])
    refresh, last = refresh_datasets_fn(datasets), LastChoice(datasets)
    # after a reload the picker is empty (built so): the choice kept on the server comes back
    assert refresh(None)["value"] == DEFAULT_DATASET
    last.keep("saved: mine")
    assert refresh(None)["value"] == "saved: mine"
    last.keep("starter: formal_email")
    assert refresh(None)["value"] == "starter: formal_email"
    # a name that is no dataset is never kept; one deleted since falls back to the default
    last.keep("../../etc/passwd")
    assert refresh(None)["value"] == "starter: formal_email"
    last.keep("saved: mine")
    (datasets / "mine.jsonl").unlink()
    assert refresh(None)["value"] == DEFAULT_DATASET
    # the picker's own value (a second load on the same page) wins
    assert refresh("starter: formal_email")["value"] == "starter: formal_email"


def test_the_dataset_choice_is_kept_on_the_server_not_in_the_page(tmp_path):
    """A gr.BrowserState read localStorage, which a browser denies to a page framed by
    another site (a Space): the whole studio then failed to load."""
    from tuner.ui.dataset import LastChoice, dataset_tab

    with gr.Blocks() as demo:
        chooser, _show = dataset_tab(tmp_path / "datasets")
    assert not [c for c in demo.get_config_file()["components"] if c.get("type") == "browserstate"]
    # whatever sets the picker is what is kept
    keep = next(f for f in demo.fns.values() if f.inputs == [chooser] and not f.outputs and f.name == "keep")
    keep.fn("starter: formal_email")
    assert LastChoice(tmp_path / "datasets").get() == "starter: formal_email"


def test_an_empty_editor_is_neither_ready_nor_warned_about():
    from tuner.ui.dataset import on_check

    assert editing.is_blank("", [["", ""]], "")
    assert editing.is_blank(None, [[None, float("nan")]], " ")
    assert not editing.is_blank("", [["Hi", ""]], "")
    assert on_check("", [["", ""]], "") == ""
    assert on_check("", [["Hi", "Hello"]], "").startswith("✓ Ready")
    assert on_check("", [["Hi", ""]], "").startswith("⚠️")


def test_a_new_empty_dataset_empties_the_row_editor(tmp_path):
    from tuner.ui.dataset import Draft, dataset_tab

    with gr.Blocks() as demo:
        _chooser, (show, _outputs) = dataset_tab(tmp_path / "datasets")
    new = next(f for f in demo.fns.values() if f.name == "on_new")
    opened = _by_id(show("starter: polite_assistant"))
    draft = next(v for v in show("starter: polite_assistant").values() if isinstance(v, Draft))
    assert len(draft.rows) == 26 and "26 rows" in opened["dataset-message"]
    out = _by_id(new.fn(draft))
    assert "A new, empty dataset" in out["dataset-message"]
    assert out["edit-row"] == 0 and out["edit-system"] == "" and out["edit-meta"] == "" and out["edit-check"] == ""
    assert out["edit-turns"].values.tolist() == [["", ""]]
    # a draft with unsaved changes is kept, and so is what the editor holds
    kept = _by_id(new.fn(draft.changed(draft.rows[1:], "delete")))
    assert "unsaved change" in kept["dataset-message"] and "edit-row" not in kept
