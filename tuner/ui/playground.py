"""The Playground tab: one prompt, the base model and any finished runs side by side.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from tuner.generate import GenSettings, Generator
from tuner.runs import RunManager
from tuner.ui.train import finished_runs



def playground_tab(trainer: RunManager, generator: Generator):
    """Chat with two variants side by side, same settings: quick checks before an evaluation."""
    with gr.Row():
        left = gr.Dropdown(label="Left", elem_id="play-left", scale=1)
        right = gr.Dropdown(label="Right", elem_id="play-right", scale=1)
        max_new = gr.Slider(16, 512, value=GenSettings().max_new_tokens, step=16, label="Max new tokens", scale=1)
    with gr.Row():
        chat_left = gr.Chatbot(label="Left", elem_id="play-chat-left", height=360)
        chat_right = gr.Chatbot(label="Right", elem_id="play-chat-right", height=360)
    with gr.Row():
        box = gr.Textbox(label="Message", elem_id="play-message", scale=4)
        send = gr.Button("Send", variant="primary", elem_id="play-send", scale=1)
        clear = gr.Button("Clear", scale=1)
    note = gr.Markdown(elem_id="play-note")

    def choices():
        options = [("base model of the chosen runs", "base")]
        options += finished_runs(trainer)
        return options

    def refresh():
        options = choices()
        return gr.update(choices=options, value="base"), gr.update(
            choices=options, value=options[1][1] if len(options) > 1 else "base")

    def reply(history, variant, text, settings, base_model):
        conversation = [{"role": m["role"], "content": _text(m["content"])} for m in history]
        conversation.append({"role": "user", "content": text})
        run = trainer.get(variant) if variant != "base" else None
        adapter = (run["run_id"], Path(run["path"]) / "adapter") if run else None
        answer = generator.generate(base_model, [conversation], settings, adapter=adapter)[0].text
        return history + [{"role": "user", "content": text}, {"role": "assistant", "content": answer}]

    def on_send(text, l_variant, r_variant, tokens, h_left, h_right):
        text = (text or "").strip()
        if not text:
            return gr.update(), h_left, h_right, "⚠️ Type a message."
        runs = [trainer.get(v) for v in (l_variant, r_variant) if v and v != "base"]
        bases = {r["config"]["base_model"] for r in runs if r}
        if len(bases) > 1:
            return gr.update(), h_left, h_right, "⚠️ The two runs have different base models."
        from tuner.models import BUNDLED

        base_model = bases.pop() if bases else BUNDLED
        settings = GenSettings(max_new_tokens=int(tokens))
        try:
            h_left = reply(h_left or [], l_variant or "base", text, settings, base_model)
            h_right = reply(h_right or [], r_variant or "base", text, settings, base_model)
        except Exception as exc:
            return gr.update(), h_left, h_right, f"⚠️ {type(exc).__name__}: {exc}"
        return "", h_left, h_right, f"Both replies use greedy decoding, at most {int(tokens)} new tokens, base `{base_model}`."

    send.click(on_send, [box, left, right, max_new, chat_left, chat_right], [box, chat_left, chat_right, note])
    box.submit(on_send, [box, left, right, max_new, chat_left, chat_right], [box, chat_left, chat_right, note])
    clear.click(lambda: ([], [], ""), None, [chat_left, chat_right, note])
    return refresh, [left, right]


def _text(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # gradio 6 message content can be a list of parts
        return " ".join(part.get("text", "") if isinstance(part, dict) else str(part) for part in content)
    return str(content)
