"""Shared fixtures: cheap models built once per test session, tmp data roots, and the
browser tests' app and page (tests/browser.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tuner import models, tiny  # noqa: E402
from tuner.paths import STARTER_DATASETS  # noqa: E402

# the browser tests' fixtures (Playwright is imported only when one of them runs)
from browser import app_url, chromium, page, patient_expect  # noqa: E402, F401

POLITE = STARTER_DATASETS / "polite_assistant.jsonl"


@pytest.fixture(scope="session")
def smollm2_tokenizer(tmp_path_factory):
    """The bundled model's tokenizer, read from its GGUF file (no download)."""
    try:
        return tiny.smollm2_tokenizer(tmp_path_factory.mktemp("smollm2-tokenizer"))
    except models.ModelUnavailable as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, smollm2_tokenizer):
    """A random-weight Llama (hidden 64, 2 layers) with the SmolLM2 tokenizer,
    saved as a local model folder: loads in under a second, trains a step in ~0.5 s."""
    return tiny.build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), smollm2_tokenizer)


@pytest.fixture(scope="session")
def bundled_models_dir(tmp_path_factory):
    """A models folder holding the bundled SmolLM2 converted from its GGUF (~25 s, once)."""
    folder = tmp_path_factory.mktemp("models")
    models.resolve(models.BUNDLED, folder)
    return folder


@pytest.fixture(scope="session")
def trained_run(tiny_llama, tmp_path_factory):
    """A LoRA run of the tiny Llama, trained to say "Hello there, friend!"; its adapter folder."""
    root = tmp_path_factory.mktemp("gen-home")
    rows = [chat(f"Say hi {i}", "Hello there, friend!") for i in range(8)]
    dataset = write_jsonl(root / "d.jsonl", rows)
    from tuner.config import TrainConfig
    from tuner.runs import RunManager

    trainer = RunManager(root / "runs", root / "models")
    trainer.start(TrainConfig(base_model=str(tiny_llama), dataset=str(dataset), learning_rate=3e-2,
                              num_train_epochs=10, test_fraction=0.0, validation_fraction=0.0, lora_dropout=0.0))
    state = trainer.wait(300)
    assert state.status == "completed", state.message
    return root / "runs" / state.run_id / "adapter"


@pytest.fixture
def home(tmp_path):
    """A fresh data root."""
    from tuner.paths import Layout

    return Layout(tmp_path / "home")


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows),
                    encoding="utf-8")
    return path


def chat(user: str, assistant: str, **meta) -> dict:
    return {"messages": [{"role": "user", "content": user},
                         {"role": "assistant", "content": assistant}], **meta}
