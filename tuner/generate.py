"""Replies from a base model and its fine-tuned adapters, from one loaded copy.

The base reply comes from the same PeftModel with its adapter disabled
(`disable_adapter()`), not from a second copy of the weights.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tuner import models
from tuner.chat import encode_prompt, ensure_chat_template

BASE = "base"


@dataclass(frozen=True)
class GenSettings:
    """Recorded with every reply, so a rating always knows what produced it."""

    max_new_tokens: int = 96  # SmolLM2-135M writes ~13 tokens/s on 2 cores
    temperature: float = 0.0  # 0: greedy, the same reply every time
    top_p: float = 1.0
    repetition_penalty: float = 1.1  # small models loop without it
    seed: int = 0
    batch_size: int = 4

    def __post_init__(self):
        if not 1 <= self.max_new_tokens <= 2048:
            raise ValueError(f"max_new_tokens must be in 1..2048 (got {self.max_new_tokens})")
        if not 0 <= self.temperature <= 2:
            raise ValueError(f"temperature must be in 0..2 (got {self.temperature})")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] (got {self.top_p})")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1 (got {self.batch_size})")


@dataclass
class Reply:
    text: str
    variant: str  # "base" or a run id
    latency_s: float  # wall time of its batch divided by the batch's size
    new_tokens: int
    settings: dict


class Generator:
    """Holds one base model; adapters of runs are loaded once and switched."""

    def __init__(self, models_dir: Path):
        self.models_dir = Path(models_dir)
        self._lock = threading.Lock()  # one generate at a time on the shared model
        self.model_name: str | None = None
        self.model = None
        self.tokenizer = None
        self._adapters: dict[str, str] = {}  # adapter name → folder

    def _ensure_base(self, model_name: str) -> None:
        if self.model_name == model_name and self.model is not None:
            return
        source = models.resolve(model_name, self.models_dir)
        model, tokenizer = models.load(source)
        ensure_chat_template(tokenizer)
        tokenizer.padding_side = "left"  # decoder-only batches pad on the left
        model.eval()
        self.model, self.tokenizer, self.model_name = model, tokenizer, model_name
        self._adapters = {}

    def _ensure_adapter(self, name: str, folder: Path) -> None:
        from peft import PeftModel

        if name in self._adapters:
            return
        if not (Path(folder) / "adapter_config.json").is_file():
            raise FileNotFoundError(f"No adapter in {folder}: is the run finished?")
        if not self._adapters:
            self.model = PeftModel.from_pretrained(self.model, str(folder), adapter_name=name)
        else:
            self.model.load_adapter(str(folder), adapter_name=name)
        self.model.eval()
        self._adapters[name] = str(folder)

    def generate(self, model_name: str, conversations: list[list[dict]], settings: GenSettings,
                 adapter: tuple[str, Path] | None = None, progress=None) -> list[Reply]:
        """Replies to each conversation; `adapter` is (name, folder) or None for the base."""
        import contextlib

        with self._lock:
            self._ensure_base(model_name)
            if adapter is not None:
                self._ensure_adapter(adapter[0], adapter[1])
                self.model.set_adapter(adapter[0])
                context, variant = contextlib.nullcontext(), adapter[0]
            elif self._adapters:
                context, variant = self.model.disable_adapter(), BASE
            else:
                context, variant = contextlib.nullcontext(), BASE
            replies = []
            with context:
                for start in range(0, len(conversations), settings.batch_size):
                    batch = conversations[start:start + settings.batch_size]
                    replies += self._batch(batch, settings, variant)
                    if progress:
                        progress(len(replies), len(conversations))
            return replies

    def _batch(self, batch, settings: GenSettings, variant: str) -> list[Reply]:
        import torch

        ids = [encode_prompt(conv, self.tokenizer) for conv in batch]
        enc = self.tokenizer.pad({"input_ids": ids}, return_tensors="pt")
        kwargs = dict(max_new_tokens=settings.max_new_tokens,
                      repetition_penalty=settings.repetition_penalty,
                      pad_token_id=self.tokenizer.pad_token_id)
        if settings.temperature > 0:
            kwargs.update(do_sample=True, temperature=settings.temperature, top_p=settings.top_p)
            torch.manual_seed(settings.seed)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        start = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(**enc, **kwargs)
        elapsed = time.perf_counter() - start
        width = enc["input_ids"].shape[1]
        replies = []
        for row in out[:, width:]:
            tokens = [t for t in row.tolist() if t != self.tokenizer.pad_token_id]
            text = self.tokenizer.decode(tokens, skip_special_tokens=True).strip()
            replies.append(Reply(text=text, variant=variant, latency_s=elapsed / len(batch),
                                 new_tokens=len(tokens), settings=asdict(settings)))
        return replies
