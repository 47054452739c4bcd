"""The Playground tab: one prompt, the base model and any finished runs side by side.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from tuner import records, zerogpu
from tuner.generate import GenSettings, Generator
from tuner.runs import RunManager
from tuner.ui.train import finished_runs



@dataclass
class _Chats:
    """What Send and Clear change."""
    box: gr.Textbox
    left: gr.Chatbot
    right: gr.Chatbot
    note: gr.Markdown


def playground_tab(trainer: RunManager, generator: Generator):
    """Chat with two variants side by side, same settings: quick checks before an evaluation."""
    with gr.Row():
        left = gr.Dropdown(label="Left", elem_id="play-left", scale=1)
        right = gr.Dropdown(label="Right", elem_id="play-right", scale=1)
        max_new = gr.Slider(16, 512, value=GenSettings().max_new_tokens, step=16, label="Max new tokens", scale=1,
                            elem_id="play-max-new")
    with gr.Row():
        chat_left = gr.Chatbot(label="Left", elem_id="play-chat-left", height=360)
        chat_right = gr.Chatbot(label="Right", elem_id="play-chat-right", height=360)
    with gr.Row():
        box = gr.Textbox(label="Message", elem_id="play-message", scale=4)
        send = gr.Button("Send", variant="primary", elem_id="play-send", scale=1)
        clear = gr.Button("Clear", scale=1)
    chats = _Chats(box, chat_left, chat_right, gr.Markdown(elem_id="play-note"))

    def refresh():
        options = [("base model of the chosen runs", "base"), *finished_runs(trainer)]
        picked = options[1][1] if len(options) > 1 else "base"
        _load_ahead(generator, _base_model(trainer, ["base", picked]))
        return {left: gr.update(choices=options, value="base"), right: gr.update(choices=options, value=picked)}

    on_send = _sender(trainer, generator, chats)
    asked, answered = [box, left, right, max_new, chat_left, chat_right], [box, chat_left, chat_right, chats.note]
    send.click(on_send, asked, answered)
    box.submit(on_send, asked, answered)
    clear.click(lambda: {chat_left: [], chat_right: [], chats.note: ""}, None, [chat_left, chat_right, chats.note])
    return refresh, [left, right]


def _sender(trainer: RunManager, generator: Generator, chats: _Chats):
    def replies(history, variant, text, settings, base_model):
        """The chat with `text` asked and its reply as it is written: one history per new word."""
        conversation = [{"role": m["role"], "content": _text(m["content"])} for m in history]
        conversation.append({"role": "user", "content": text})
        run = trainer.get(variant) if variant != "base" else None
        adapter = (run["run_id"], records.adapter_dir(Path(run["path"]))) if run else None
        asked = history + [{"role": "user", "content": text}]
        for partial in generator.stream(base_model, conversation, settings, adapter=adapter):
            yield asked + [{"role": "assistant", "content": partial}]

    def on_send(text, l_variant, r_variant, tokens, h_left, h_right):
        """A generator: both chats show the message at once, then the left reply is
        streamed word by word, then the right one (one model answers one at a time)."""
        text = (text or "").strip()
        if not text:
            yield {chats.left: h_left, chats.right: h_right, chats.note: "⚠️ Type a message."}
            return
        base_model = _base_model(trainer, [l_variant, r_variant])
        if base_model is None:
            yield {chats.left: h_left, chats.right: h_right,
                   chats.note: "⚠️ The two runs have different base models."}
            return
        settings = GenSettings(max_new_tokens=int(tokens))
        h_left, h_right = h_left or [], h_right or []
        asked = [{"role": "user", "content": text}]
        yield {chats.box: "", chats.left: h_left + asked, chats.right: h_right + asked,
               chats.note: "Writing the left reply…"}
        try:
            for h_left in replies(h_left, l_variant or "base", text, settings, base_model):
                yield {chats.left: h_left}
            yield {chats.note: "Writing the right reply…"}
            for h_right in replies(h_right, r_variant or "base", text, settings, base_model):
                yield {chats.right: h_right}
        except Exception as exc:
            yield {chats.note: f"⚠️ {type(exc).__name__}: {exc}"}
            return
        yield {chats.note: f"Both replies use greedy decoding, at most {int(tokens)} new tokens, base `{base_model}`."}

    return on_send


def _base_model(trainer: RunManager, variants: list[str | None]) -> str | None:
    """The base model both sides use: the chosen runs' (None if they differ), else the bundled one."""
    from tuner.models import BUNDLED

    runs = [trainer.get(v) for v in variants if v and v != "base"]
    bases = {r["config"]["base_model"] for r in runs if r}
    if len(bases) > 1:
        return None
    return bases.pop() if bases else BUNDLED


def _load_ahead(generator: Generator, base_model: str | None) -> threading.Thread | None:
    """Load the base model in the background when the tab opens, so the first Send's reply
    starts at once instead of after the load. A failure is left for Send to report.
    Returns the loading thread, if one was started."""
    if base_model is None or zerogpu.enabled() or generator.model_name == base_model:
        return None

    def load():
        try:
            generator.load(base_model)
        except Exception:  # noqa: BLE001 - Send loads it again and says what went wrong
            pass

    thread = threading.Thread(target=load, name="tuner-playground-load", daemon=True)
    thread.start()
    return thread


def _text(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # gradio 6 message content can be a list of parts
        return " ".join(part.get("text", "") if isinstance(part, dict) else str(part) for part in content)
    return str(content)
