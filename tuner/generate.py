"""Replies from a base model and its fine-tuned adapters, from one loaded copy.

The base reply comes from the same PeftModel with its adapter disabled
(`disable_adapter()`), not from a second copy of the weights.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tuner import models

BASE = "base"


@dataclass(frozen=True)
class GenSettings:
    """Recorded with every reply, so a rating always knows what produced it."""

    max_new_tokens: int = 96  # SmolLM2-135M writes ~13 tokens/s on 2 cores
    temperature: float = 0.0  # 0: greedy, the same reply every time
    top_p: float = 1.0
    repetition_penalty: float = 1.1  # small models loop without it
    seed: int = 0
    # On an idle 2-core CPU a decoding step of SmolLM2-135M took 93 ms for 10 rows
    # against 51 ms for one (reading the weights dominates): ~5× the throughput.
    # Its KV cache is ~80 MB at 128 new tokens. Under CPU contention from other
    # processes the gain shrinks or vanishes (see bench/generate_speed.py).
    batch_size: int = 10

    def __post_init__(self):
        if not 1 <= self.max_new_tokens <= 2048:
            raise ValueError(f"max_new_tokens must be in 1..2048 (got {self.max_new_tokens})")
        if not 0 <= self.temperature <= 2:
            raise ValueError(f"temperature must be in 0..2 (got {self.temperature})")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] (got {self.top_p})")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1 (got {self.batch_size})")


def adapter_name(name: str) -> str:
    """peft adapter names may not contain dots."""
    return re.sub(r"\W", "_", name)


def balanced_batches(n: int, batch_size: int) -> list[range]:
    """n items in as few batches as batch_size allows, of near-equal sizes: 10
    prompts at batch size 8 go as 5 + 5, not 8 + 2 (a batch costs about as
    much per step as a full one, so a nearly empty last batch wastes a pass)."""
    count = -(-n // batch_size) if n else 0
    bounds = [round(i * n / count) for i in range(count + 1)] if count else [0]
    return [range(a, b) for a, b in zip(bounds, bounds[1:])]


@dataclass
class Reply:
    text: str
    variant: str  # "base" or a run id
    latency_s: float  # wall time of its batch divided by the batch's size
    new_tokens: int
    settings: dict


class Generator:
    """Holds one base model; the adapters of runs are loaded once and switched.

    LoRA adapters live in one PeftModel (peft switches them with set_adapter);
    a prompt-tuning adapter wraps the same base weights in its own PeftModel,
    because peft does not mix prompt learning and LoRA in one model. The base
    reply always runs with every LoRA adapter disabled.
    """

    def __init__(self, models_dir: Path):
        self.models_dir = Path(models_dir)
        self._lock = threading.Lock()  # one generate at a time on the shared model
        self.model_name: str | None = None
        self.base = None  # the transformers model (LoRA layers get injected into it)
        self.lora = None  # PeftModel holding every LoRA adapter loaded so far
        self.prompted: dict[str, object] = {}  # adapter name → prompt-tuning PeftModel
        self.tokenizer = None

    @property
    def model(self):
        """The model object generation runs on for the base reply."""
        return self.lora if self.lora is not None else self.base

    def _ensure_base(self, model_name: str) -> None:
        if self.model_name == model_name and self.base is not None:
            return
        from tuner.chat import ensure_chat_template  # imports torch: not at the app's start

        source = models.resolve(model_name, self.models_dir)
        model, tokenizer = models.load(source)
        ensure_chat_template(tokenizer)
        tokenizer.padding_side = "left"  # decoder-only batches pad on the left
        model.eval()
        self.base, self.tokenizer, self.model_name = model, tokenizer, model_name
        self.lora, self.prompted = None, {}

    def load(self, model_name: str, adapters: list[tuple[str, Path]] = ()) -> None:
        """Load the base model and adapters ahead, so the first reply does not wait for them."""
        with self._lock:
            self._ensure_base(model_name)
            for name, folder in adapters:
                self._adapter_model(name, folder)

    def _adapter_model(self, name: str, folder: Path):
        """The model to generate with for this adapter, loading it on first use."""
        import json as _json

        from peft import PeftModel

        name = adapter_name(name)
        config_file = Path(folder) / "adapter_config.json"
        if not config_file.is_file():
            raise FileNotFoundError(f"No adapter in {folder}: is the run finished?")
        peft_type = _json.loads(config_file.read_text(encoding="utf-8")).get("peft_type", "LORA")
        if peft_type == "PROMPT_TUNING":
            if name not in self.prompted:
                self.prompted[name] = PeftModel.from_pretrained(self.base, str(folder), adapter_name=name).eval()
            return self.prompted[name]
        if self.lora is None:
            self.lora = PeftModel.from_pretrained(self.base, str(folder), adapter_name=name).eval()
        elif name not in self.lora.peft_config:
            self.lora.load_adapter(str(folder), adapter_name=name)
            self.lora.eval()
        self.lora.set_adapter(name)
        return self.lora

    def generate(self, model_name: str, conversations: list[list[dict]], settings: GenSettings,
                 adapter: tuple[str, Path] | None = None, progress=None) -> list[Reply]:
        """Replies to each conversation; `adapter` is (name, folder) or None for the base."""
        with self._lock:
            self._ensure_base(model_name)
            if adapter is None:
                target, variant = self.model, BASE
            else:
                target, variant = self._adapter_model(*adapter), adapter[0]
            # LoRA layers sit inside the shared base: off for the base reply and
            # for a prompt-tuning reply, on (the chosen one) for a LoRA reply
            lora_off = self.lora is not None and (adapter is None or target is not self.lora)
            context = self.lora.disable_adapter() if lora_off else contextlib.nullcontext()
            replies = []
            with context:
                for batch in balanced_batches(len(conversations), settings.batch_size):
                    replies += self._batch(target, [conversations[i] for i in batch], settings, variant)
                    if progress:
                        progress(len(replies), len(conversations))
            return replies

    def _batch(self, model, batch, settings: GenSettings, variant: str) -> list[Reply]:
        import torch

        from tuner.chat import encode_prompt

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
            out = model.generate(**enc, **kwargs)
        elapsed = time.perf_counter() - start
        width = enc["input_ids"].shape[1]
        replies = []
        for row in out[:, width:]:
            tokens = [t for t in row.tolist() if t != self.tokenizer.pad_token_id]
            text = self.tokenizer.decode(tokens, skip_special_tokens=True).strip()
            replies.append(Reply(text=text, variant=variant, latency_s=elapsed / len(batch),
                                 new_tokens=len(tokens), settings=asdict(settings)))
        return replies
