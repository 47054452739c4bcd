"""The Results tab's "Correct low-rated replies" part: the owner writes the better reply beside
one the raters scored low. A correction is a chosen answer for the next DPO or KTO run
(ratings.preferences) and, saved into a new version of a dataset, an example for the next
supervised run. The reply the raters scored is never changed."""

from __future__ import annotations

import math
from pathlib import Path

import gradio as gr

from ratings import preferences
from ratings.scale import SUCCESS_AT
from ratings.store import RatingError, Store
from tuner import data as tdata
from tuner.paths import StorageError


def low_choices(store: Store, eval_id: int, threshold: int = SUCCESS_AT) -> list[tuple[str, int]]:
    """(label, reply id) of the replies whose mean score is below the threshold, worst first;
    a corrected one is marked ✎."""
    rated = preferences.rated_replies(store, eval_id)
    if rated.empty:
        return []
    low = rated[(rated["scores"] > 0) & (rated["mean score"] < threshold)].sort_values(["mean score", "position"])
    return [(f"{'✎ ' if r['correction'] else ''}#{r['position']} {r['label']} · mean {r['mean score']:.1f} · "
             f"{r['prompt'][:60]}", int(r["reply_id"])) for r in low.to_dict("records")]


def _shown(store: Store, eval_id: int, reply_id) -> tuple[str, str]:
    """(the prompt and reply in Markdown, the text to edit: the correction, else the reply)."""
    rated = preferences.rated_replies(store, eval_id)
    row = rated[rated["reply_id"] == int(reply_id)] if not rated.empty else rated
    if row.empty:
        return "", ""
    r = row.iloc[0]
    mean = "" if r["scores"] == 0 or math.isnan(r["mean score"]) else f", mean score {r['mean score']:.1f}"
    shown = (f"**Prompt #{r['position']}:** {r['prompt']}\n\n**{r['label']}** replied ({r['scores']} score(s)"
             f"{mean}):\n\n> " + "\n> ".join(str(r["reply"]).splitlines() or [""]))
    return shown, r["correction"] or r["reply"]


def _eval(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def corrections_section(store: Store, datasets_dir: Path, eval_pick: gr.Dropdown):
    """The section; returns (handler, inputs, outputs) that refreshes its reply list for the evaluation."""
    with gr.Accordion("Correct low-rated replies (each becomes a chosen answer)", open=False,
                      elem_id="results-corrections"):
        gr.Markdown("Pick a reply scored below 4, write what it should have said and save: the next DPO or KTO "
                    "run (Train tab) takes your version as a chosen answer, against the prompt's low-rated "
                    "replies. The raters' scores and the reply they saw stay as they were. Save the corrections "
                    "into a new version of a dataset for the next supervised run too.")
        reply = gr.Dropdown([], label="Low-rated reply", allow_custom_value=True, elem_id="correct-reply")
        shown = gr.Markdown(elem_id="correct-shown")
        text = gr.Textbox(label="The better reply (empty: remove the correction)", lines=6, elem_id="correct-text")
        save = gr.Button("Save correction", elem_id="correct-save")
        with gr.Row():
            dataset = gr.Dropdown([], label="Add the corrections to a new version of", allow_custom_value=True,
                                  elem_id="correct-dataset", scale=3)
            to_dataset = gr.Button("Save as a new version", elem_id="correct-to-dataset", scale=1)
        note = gr.Markdown(elem_id="correct-note")

    def refresh(eval_id):
        eval_id = _eval(eval_id)
        choices = low_choices(store, eval_id) if eval_id and store.evaluation(eval_id) else []
        names = list(tdata.available(datasets_dir))
        return {reply: gr.update(choices=choices, value=choices[0][1] if choices else None),
                dataset: gr.update(choices=names, value=None), note: ""}

    def on_reply(eval_id, reply_id):
        eval_id = _eval(eval_id)
        if not eval_id or reply_id in (None, ""):
            return {shown: "", text: ""}
        try:
            markdown, editable = _shown(store, eval_id, int(reply_id))
        except (TypeError, ValueError):
            return {shown: "⚠️ Pick a reply from the list.", text: ""}
        return {shown: markdown, text: editable}

    def on_save(eval_id, reply_id, new_text):
        eval_id = _eval(eval_id)
        choices = low_choices(store, eval_id) if eval_id and store.evaluation(eval_id) else []
        if reply_id in (None, "") or int(_eval(reply_id) or -1) not in {i for _, i in choices}:
            return {note: "⚠️ Pick a low-rated reply of this evaluation first."}
        try:
            preferences.correct(store, int(reply_id), new_text)
        except (RatingError, StorageError) as exc:
            return {note: f"⚠️ {exc}"}
        dpo = preferences.dpo_pairs(store, eval_id)
        kto = preferences.kto_examples(store, eval_id)
        done = "Correction saved" if (new_text or "").strip() else "Correction removed"
        return {note: f"{done}. This evaluation now gives {dpo.describe()}; and {kto.describe()}.",
                reply: gr.update(choices=low_choices(store, eval_id), value=int(reply_id))}

    def on_to_dataset(eval_id, label):
        eval_id = _eval(eval_id)
        path = tdata.available(datasets_dir).get(label)
        if not eval_id or path is None:
            return {note: "⚠️ Pick an evaluation and the dataset the corrections go into."}
        corrected = preferences.corrected_chat_rows(store, eval_id)
        if not corrected:
            return {note: "⚠️ This evaluation has no corrections yet: save one above first."}
        try:
            rows, added = preferences.with_corrections(tdata.load_jsonl(path).rows, corrected)
            if not added:
                return {note: f"The {len(corrected)} correction(s) are in {label} already: nothing to add."}
            saved = tdata.save_version(rows, path.stem, datasets_dir,
                                       note=f"{label} + {added} correction(s) of evaluation #{eval_id}")
        except (ValueError, OSError) as exc:
            return {note: f"⚠️ {exc}"}
        # the label already says "saved: …": it is named, not prefixed with another "Saved"
        return {note: f"**{len(rows)} rows**, {added} of them corrections, saved as `{saved.name}` "
                      f"({tdata.label_of(saved)}). Pick it on the Train tab for the next supervised run.",
                dataset: gr.update(choices=list(tdata.available(datasets_dir)), value=tdata.label_of(saved))}

    outputs = [reply, dataset, note]
    eval_pick.change(refresh, eval_pick, outputs)
    reply.change(on_reply, [eval_pick, reply], [shown, text])
    save.click(on_save, [eval_pick, reply, text], [note, reply])
    to_dataset.click(on_to_dataset, [eval_pick, dataset], [note, dataset])
    return refresh, [eval_pick], outputs
