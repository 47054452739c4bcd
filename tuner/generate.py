"""Replies from a base model and its fine-tuned adapters, from one loaded copy.

The base reply comes from the same weights, never from a second copy: as a
"__base__" row of a mixed batch (`generate_all`), or with the adapters disabled
(`disable_adapter()`, `generate`).
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from tuner import models, zerogpu

BASE = "base"


@dataclass(frozen=True)
class GenSettings:
    """Recorded with every reply, so a rating always knows what produced it."""

    max_new_tokens: int = 96  # a short reply; a small model on 2 cores is slow (see docs/performance.md)
    temperature: float = 0.0  # 0: greedy, the same reply every time
    top_p: float = 1.0
    repetition_penalty: float = 1.1  # small models loop without it
    seed: int = 0
    # Rows per batch (the base and LoRA variants share batches, see generate_all). On an
    # idle 2-core AMX Xeon a decoding step of SmolLM2-135M for 20 rows took little more than
    # one for a single row (measured: see docs/performance.md): reading the weights
    # dominates, so 20 rows give many times one row's throughput, and their KV cache at 128
    # new tokens stays small. Under contention from other processes the gain shrinks.
    batch_size: int = 20

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


def _contiguous_input(_module, args):
    return (args[0].contiguous(), *args[1:])


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

    def __init__(self, models_dir: Path, precision: str = "auto"):
        """precision: the base weights' dtype for generation. auto: on a GPU (where there is
        one, the model runs there: tuner.devices) bf16, or fp16 on a GPU without bf16; on a CPU
        bf16 where its bf16 matmuls measure ≥2× fp32's (AMX), else fp32.
        On a 2-core AMX Xeon a 10-row decoding step of SmolLM2-135M was much faster in bf16
        than in fp32 (one row: about the same; measured: see docs/performance.md), and the
        weights take half the memory. Replies can differ from fp32's in a few tokens; each reply records
        the dtype it was generated in."""
        if precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"generation precision must be auto, bf16 or fp32 (got {precision!r})")
        self.precision = precision
        self.dtype: str | None = None  # resolved when the base model is loaded
        self.device: str | None = None  # "cuda" or "cpu", likewise (tuner.devices.plan)
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

        import torch

        from tuner import devices

        source = models.resolve(model_name, self.models_dir)
        place = devices.for_generation(self.precision)
        dtype = getattr(torch, devices.TORCH_DTYPES[place.dtype])
        if place.device_map:  # several GPUs: accelerate places the layers
            model, tokenizer = models.load(source, dtype=dtype, device_map=place.device_map)
        elif place.dtype != "fp32":
            model, tokenizer = models.load_as(source, dtype)
        else:
            model, tokenizer = models.load(source)
        if place.device == "cuda" and not place.device_map:
            model = model.to("cuda")
        self.dtype, self.device = place.dtype, place.device
        head = model.get_output_embeddings()
        if head is not None:
            # The prefill hands the head a slice of the last hidden states ([rows, 1, hidden],
            # not contiguous); once peft has injected LoRA layers, torch's matmul then
            # expanded the tied [hidden, vocab] weight to every row and copied it (SmolLM2,
            # 10 rows, bf16: a transient the size of the head's weight per row, measured in
            # docs/performance.md).
            head.register_forward_pre_hook(_contiguous_input)
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
        if zerogpu.enabled():  # in the lent GPU's worker process (tuner.zerogpu)
            return _on_zerogpu(self, "_generate_one", (model_name, conversations, settings, adapter, None),
                               len(conversations), settings)
        with self._lock:
            return self._generate_one(model_name, conversations, settings, adapter, progress)

    def _generate_one(self, model_name, conversations, settings, adapter, progress, stop_when=None) -> list[Reply]:
        """One variant's replies; the caller holds the lock."""
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
                replies += self._batch(target, [conversations[i] for i in batch], settings, variant,
                                       stop_when=stop_when)
                if progress:
                    progress(len(replies), len(conversations))
        return replies

    def stream(self, model_name: str, conversation: list[dict], settings: GenSettings,
               adapter: tuple[str, Path] | None = None) -> Iterator[str]:
        """One reply to `conversation` as it is written: the text so far, growing, after
        each decoded word; the last is exactly what `generate` returns for it (the same
        single-row batch, decoded the same way).

        transformers' TextIteratorStreamer hands over the words while `generate` runs
        in a thread of its own; the model's lock is held until that thread ends, even
        when the caller stops reading early (the generation is told to stop then)."""
        if zerogpu.enabled():  # the worker process cannot stream back: the whole reply at once
            yield self.generate(model_name, [conversation], settings, adapter=adapter)[0].text
            return
        with self._lock:
            yield from self._stream_one(model_name, conversation, settings, adapter)

    def _stream_one(self, model_name, conversation, settings, adapter) -> Iterator[str]:
        """stream's work; the caller holds the lock."""
        self._ensure_base(model_name)
        from transformers import TextIteratorStreamer  # after the model: transformers is imported whole by then

        target = self.model if adapter is None else self._adapter_model(*adapter)
        # as in _generate_one: LoRA off for the base reply and a prompt-tuning one
        lora_off = self.lora is not None and (adapter is None or target is not self.lora)
        context = self.lora.disable_adapter() if lora_off else contextlib.nullcontext()
        variant = BASE if adapter is None else adapter[0]
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        stop = threading.Event()
        done: dict = {}

        def run():
            try:
                done["replies"] = self._batch(target, [conversation], settings, variant, streamer=streamer,
                                              stop=stop)
            except BaseException as exc:  # handed to the reader, which re-raises it
                done["error"] = exc
                streamer.end()  # the reader waits on the streamer: let it go

        with context:
            worker = threading.Thread(target=run, name="tuner-stream", daemon=True)
            worker.start()
            try:
                text, shown = "", ""
                for piece in streamer:
                    text += piece
                    if text.strip() and text.strip() != shown:
                        shown = text.strip()
                        yield shown
            finally:
                stop.set()
                worker.join()
        if "error" in done:
            raise done["error"]
        final = done["replies"][0].text
        if final != shown or not shown:  # an empty reply is still one reply
            yield final

    def generate_all(self, model_name: str, conversations: list[list[dict]], settings: GenSettings,
                     adapters: list[tuple[str, Path] | None], progress=None, stop_when=None) -> list[list[Reply]]:
        """Every variant's replies to every conversation: one list per entry of
        `adapters` (None: the base model).

        The base and the LoRA adapters share batches: each row names its adapter
        (peft's mixed-adapter batches, "__base__" for the base), so 10 prompts × 2
        variants go through as one batch of 20 rows instead of two of 10 (a decoding
        step of 20 rows costs little more than one of 10: the weights are read once).
        Prompt-tuning and DoRA adapters, which peft cannot mix, go variant by variant.

        `stop_when(text)`, where given, ends a row once its reply so far makes it true (checked
        every STOP_EVERY steps): for replies that only need to be as long as a check needs (a
        reply past a word limit fails it whatever follows). A batch ends when its last row does,
        so a runaway row no longer holds every other row's batch to max_new_tokens. Not on
        ZeroGPU (a function cannot cross to the worker process)."""
        if zerogpu.enabled():  # in the lent GPU's worker process (tuner.zerogpu)
            return _on_zerogpu(self, "_generate_all", (model_name, conversations, settings, adapters, None),
                               len(conversations) * len(adapters), settings)
        with self._lock:
            return self._generate_all(model_name, conversations, settings, adapters, progress, stop_when)

    def _generate_all(self, model_name, conversations, settings, adapters, progress,
                      stop_when=None) -> list[list[Reply]]:
        """generate_all's work; the caller holds the lock (or is the ZeroGPU worker)."""
        self._ensure_base(model_name)
        for adapter in adapters:
            if adapter is not None:
                self._adapter_model(*adapter)
        mixable = [i for i, a in enumerate(adapters) if a is None or self._mixable(a[0])]
        if self.lora is None:  # no LoRA adapter: only base rows can share a batch
            mixable = [i for i in mixable if adapters[i] is None]
        results: list[list[Reply] | None] = [None] * len(adapters)
        rows = [(i, c) for i in mixable for c in range(len(conversations))]
        done_rows, total_rows = 0, len(adapters) * len(conversations)
        replies: dict[tuple[int, int], Reply] = {}
        for batch in balanced_batches(len(rows), settings.batch_size):
            picked = [rows[k] for k in batch]
            names = ["__base__" if adapters[i] is None else adapter_name(adapters[i][0]) for i, _c in picked]
            labels = [BASE if adapters[i] is None else adapters[i][0] for i, _c in picked]
            extra = {"adapter_names": names} if self.lora is not None else {}
            # progress within a batch too, token by token: one batch can be the whole evaluation
            on_token = (lambda step, before=done_rows, n=len(picked):
                        progress(before + n * step / max(1, settings.max_new_tokens), total_rows)) \
                if progress else None
            out = self._batch(self.model, [conversations[c] for _i, c in picked], settings, labels,
                              on_token=on_token, stop_when=stop_when, **extra)
            replies.update(zip(picked, out))
            done_rows += len(picked)
            if progress:
                progress(done_rows, total_rows)
        for i in mixable:
            results[i] = [replies[(i, c)] for c in range(len(conversations))]
        for i, adapter in enumerate(adapters):  # the ones peft cannot mix, each on its own
            if results[i] is None:
                offset = done_rows
                results[i] = self._generate_one(model_name, conversations, settings, adapter, (
                    (lambda n, _t, o=offset: progress(o + n, total_rows)) if progress else None), stop_when)
                done_rows += len(conversations)
        return results

    def _mixable(self, name: str) -> bool:
        """Whether this loaded adapter is a LoRA one that peft can mix in a batch (not DoRA)."""
        key = adapter_name(name)
        config = self.lora.peft_config.get(key) if self.lora is not None else None
        return config is not None and not getattr(config, "use_dora", False)

    def _batch(self, model, batch, settings: GenSettings, variant: str | list[str], on_token=None,
               streamer=None, stop: threading.Event | None = None, stop_when=None, **extra) -> list[Reply]:
        """One batch's replies; `on_token(step)` is called after each decoding step. A
        one-row batch can also feed a transformers streamer, and end early once `stop` is set."""
        import torch

        from tuner.chat import encode_prompt

        ids = [encode_prompt(conv, self.tokenizer) for conv in batch]
        enc = self.tokenizer.pad({"input_ids": ids}, return_tensors="pt").to(model.device)
        variants = variant if isinstance(variant, list) else [variant] * len(batch)
        kwargs = dict(max_new_tokens=settings.max_new_tokens,
                      repetition_penalty=settings.repetition_penalty,
                      pad_token_id=self.tokenizer.pad_token_id, **extra)
        if settings.temperature > 0:
            # transformers' sampling, drawn among the top-k candidates only (_top_sample); the
            # greedy pick after it takes the drawn token
            config = model.generation_config
            if _only_top_k_and_p(config):
                top_k = TRANSFORMERS_TOP_K if config.top_k is None else config.top_k
                kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None,
                              logits_processor=_top_sample(settings.temperature, top_k, settings.top_p))
            else:  # a model whose config asks for other warpers (min_p, typical_p, …): transformers' own
                kwargs.update(do_sample=True, temperature=settings.temperature, top_p=settings.top_p)
            torch.manual_seed(settings.seed)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if on_token is not None:
            kwargs["stopping_criteria"] = _step_reporter(on_token, enc["input_ids"].shape[1])
        if streamer is not None:
            kwargs["streamer"] = streamer
        if stop is not None:
            kwargs["stopping_criteria"] = _stopper(stop, kwargs.get("stopping_criteria"))
        if stop_when is not None:
            kwargs["stopping_criteria"] = _text_stopper(stop_when, self.tokenizer, enc["input_ids"].shape[1],
                                                        kwargs.get("stopping_criteria"))
        start = time.perf_counter()
        with torch.inference_mode():
            cache = _droppable_cache(model) if streamer is None and len(batch) > 1 else None
            if cache is not None:
                rows = _generate_compacting(model, enc, kwargs, _eos_ids(model), cache)
            else:
                rows = list(model.generate(**enc, **kwargs))
        elapsed = time.perf_counter() - start
        width = enc["input_ids"].shape[1]
        replies = []
        for row, name in zip((r[width:] for r in rows), variants):
            tokens = [t for t in row.tolist() if t != self.tokenizer.pad_token_id]
            text = self.tokenizer.decode(tokens, skip_special_tokens=True).strip()
            replies.append(Reply(text=text, variant=name, latency_s=elapsed / len(batch),
                                 new_tokens=len(tokens),
                                 settings=asdict(settings) | {"dtype": self.dtype, "device": self.device}))
        return replies


# Finished rows leave the batch: once this share of a batch's rows has ended, decoding pauses,
# the ended rows' replies are kept, and the others go on in a smaller batch from their KV cache
COMPACT_AT = 0.25


def _prompt_learning(model) -> bool:
    """Whether `model` is a peft prompt-learning model (prompt tuning): its virtual tokens are
    added at the first step only, so its generation is not resumed from a cache."""
    config = getattr(model, "active_peft_config", None)
    return bool(getattr(config, "is_prompt_learning", False))


def _droppable_cache(model):
    """An empty KV cache for `model` whose rows can be dropped mid-generation, or None where
    finished rows must stay (plain model.generate then): COMPACT_AT off, peft prompt tuning,
    a generation config that asks for another cache (Gemma's "hybrid" is a static one), or
    layers that hold more than keys and values (convolution or linear-attention state)."""
    if COMPACT_AT > 1 or _prompt_learning(model):
        return None
    if getattr(model.generation_config, "cache_implementation", None) not in (None, "dynamic"):
        return None
    from transformers.cache_utils import DynamicCache, DynamicLayer, DynamicSlidingWindowLayer

    try:
        cache = DynamicCache(config=model.config)
    except Exception:  # a config the cache cannot read: generate makes its own
        return None
    plain = (DynamicLayer, DynamicSlidingWindowLayer)
    if not all(type(layer) in plain for layer in getattr(cache, "layers", [])):
        return None
    return cache


def _eos_ids(model) -> list[int]:
    """The end tokens generate itself stops a row at (the model's generation config)."""
    eos = model.generation_config.eos_token_id
    return [] if eos is None else [eos] if isinstance(eos, int) else list(eos)


def _generate_compacting(model, enc, kwargs: dict, eos_ids: list[int], cache) -> list:
    """model.generate(**enc, **kwargs), each row's sequence (prompt and reply, as generate
    returns them), but a row that has ended stops costing a decoding step.

    transformers decodes every row until the batch's last one ends: with replies of 146 tokens
    on average and a cap of 240, ~40% of the row-steps of a 48-row batch went to rows already
    finished (docs/performance.md). Here, once COMPACT_AT of the rows have ended (an end token,
    or a stopping criterion such as stop_when), decoding pauses; the ended rows are kept, and
    the others resume from their own KV cache (Cache.batch_select_indices), with their
    adapter names and the same logits processors and criteria (`cache`: _droppable_cache's, the
    first call's). Greedy rows get the replies they would get in the full batch (up to a smaller
    batch's rounding); sampled ones are drawn from the same distribution."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    inner = kwargs.get("stopping_criteria") or StoppingCriteriaList()
    eos = torch.tensor(eos_ids, dtype=torch.long)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    width, limit = ids.shape[1], kwargs["max_new_tokens"]
    names = kwargs.get("adapter_names")
    place = list(range(ids.shape[0]))  # each row of the running batch: its index in the caller's batch
    results: list = [None] * ids.shape[0]

    class Pause(StoppingCriteria):
        """The caller's criteria, and a pause of every row once enough of them have ended."""

        def __init__(self, rows: int):
            self.ended = torch.zeros(rows, dtype=torch.bool)
            self.at = max(1, int(rows * COMPACT_AT))

        def __call__(self, input_ids, scores, **kw):
            done = inner(input_ids, scores, **kw) if len(inner) else torch.zeros(
                input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
            self.ended |= done.cpu() | torch.isin(input_ids[:, -1].cpu(), eos)
            if int(self.ended.sum()) >= self.at and not bool(self.ended.all()):
                return torch.ones_like(done)
            return done

    while True:
        pause = Pause(len(place))
        step = dict(kwargs, stopping_criteria=StoppingCriteriaList([pause]),
                    max_new_tokens=limit - (ids.shape[1] - width), return_dict_in_generate=True)
        if names is not None:
            step["adapter_names"] = [names[i] for i in place]
        out = model.generate(input_ids=ids, attention_mask=mask, past_key_values=cache, **step)
        sequences = out.sequences
        new = sequences.shape[1] - ids.shape[1]
        # rows that ended in the last step carry no end mark yet: the criterion saw them
        going = [j for j in range(len(place)) if not pause.ended[j]]
        if sequences.shape[1] - width >= limit or not going or not new:
            going = []
        cache = out.past_key_values
        for j in set(range(len(place))) - set(going):
            results[place[j]] = sequences[j]
        if not going:
            # rows that ran on to the cap in this call keep what they wrote
            return results
        keep = torch.tensor(going, device=sequences.device)
        cache.batch_select_indices(keep)
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], new)], dim=1)[keep]
        ids = sequences[keep]
        place = [place[j] for j in going]


# the top-k transformers' sampling applies when the model's generation config sets none
TRANSFORMERS_TOP_K = 50
TIES = 64  # candidates past the k-th looked at for scores tied with it


def _only_top_k_and_p(config) -> bool:
    """Whether transformers' sampling for this generation config is temperature, top-k and top-p
    alone (no min_p, typical_p, epsilon, eta or top-h warper), which _top_sample reproduces."""
    unset = {"min_p": (None,), "typical_p": (None, 1.0), "epsilon_cutoff": (None, 0.0),
             "eta_cutoff": (None, 0.0), "top_h": (None,)}
    return all(getattr(config, name, None) in values for name, values in unset.items())


def candidates(scores, temperature: float, top_k: int, top_p: float):
    """(probabilities, token ids) of the tokens transformers' sampling can draw from `scores`
    ([rows, vocab]): temperature, top-k (with the ties at the k-th score), top-p; the
    probabilities of the others are 0. See _top_sample."""
    vocab = scores.shape[-1]
    k = vocab if top_k <= 0 else min(top_k, vocab)
    # TopKLogitsWarper keeps every token tied with the k-th score (common with bf16 logits:
    # dropping them moved ~0.2% of each step's probability on SmolLM2): take TIES more
    # candidates and keep those at or above the k-th; the whole vocabulary if ties run past them
    wide = min(vocab, k + TIES)
    values, indices = scores.topk(wide, dim=-1)  # descending
    if wide < vocab and bool((values[:, -1] >= values[:, k - 1]).any()):
        values, indices = scores.topk(vocab, dim=-1)
    values = values.masked_fill(values < values[:, k - 1:k], -float("inf"))
    probs = (values / temperature).softmax(dim=-1)
    if top_p < 1.0:
        # TopPLogitsWarper's rule, on the ascending order: drop the tokens whose cumulative
        # probability from the bottom is at most 1 - top_p, never the most likely one
        drop = probs.flip(-1).cumsum(dim=-1).flip(-1) <= (1 - top_p)
        drop[..., 0] = False
        probs = probs.masked_fill(drop, 0.0)
    return probs, indices


def _top_sample(temperature: float, top_k: int, top_p: float):
    """A LogitsProcessorList that samples the next token as transformers' sampling does
    (temperature, then top-k, then top-p, then a draw from what is left) and leaves only that
    token's score finite, so greedy decoding picks it.

    transformers sorts the whole vocabulary for top-p and draws with torch.multinomial over
    all of it, although top-k (50 by default) has already left only k tokens: on 2 CPU cores,
    48 rows of SmolLM2's 49,152 tokens, the draw's exponential_, the sort and its cumsum took
    ~80 ms of a ~330 ms decoding step (torch.profiler, docs/performance.md). Here top-p and the draw run
    on the k candidates (and any tied with the k-th, as transformers keeps them). The distribution
    is transformers'; among tokens tied at top-p's edge, which ones are kept can differ, not how
    many. top_k 0 means the whole vocabulary."""
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    class TopSample(LogitsProcessor):
        def __call__(self, input_ids, scores):
            probs, indices = candidates(scores, temperature, top_k, top_p)
            choice = indices.gather(-1, torch.multinomial(probs, num_samples=1))
            return torch.full_like(scores, -float("inf")).scatter_(-1, choice, 0.0)

    return LogitsProcessorList([TopSample()])


STOP_EVERY = 8  # decoding steps between stop_when's looks at the replies (each look decodes every row)


def _text_stopper(stop_when, tokenizer, prompt_width: int, criteria=None):
    """`criteria` (a StoppingCriteriaList or None) and one that ends each row whose reply so far
    makes `stop_when(text)` true, looking every STOP_EVERY steps."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class StopWhen(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
            if (input_ids.shape[1] - prompt_width) % STOP_EVERY:
                return done
            texts = tokenizer.batch_decode(input_ids[:, prompt_width:], skip_special_tokens=True)
            return done | torch.tensor([bool(stop_when(t.strip())) for t in texts], device=input_ids.device)

    return StoppingCriteriaList([*(criteria or []), StopWhen()])


def _step_reporter(on_token, prompt_width: int):
    """A stopping criterion that never stops: it reports each decoding step (for a progress bar)."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class Report(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            on_token(input_ids.shape[1] - prompt_width)
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([Report()])


def _stopper(stop: threading.Event, criteria=None):
    """`criteria` (a StoppingCriteriaList or None) and one that ends the generation once `stop` is set."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class Stop(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), stop.is_set(), dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([*(criteria or []), Stop()])


# --- ZeroGPU: generation in the lent GPU's worker process ---------------------------------------
# The worker is a fork of this process that ZeroGPU keeps while it is idle: the Generator it
# uses is its own, made there from the app's Generator's settings on its first call (a
# Generator the app made after the worker was forked would not be in its memory) and kept, with
# the model loaded on the GPU, for the next. Only plain values cross: conversations, settings,
# adapter folders; the replies back.
_WORKER_GENERATORS: dict[tuple, Generator] = {}


def _in_worker(key: tuple, method: str, args: tuple, _rows: int, _max_new_tokens: int):
    models_dir, precision = key
    if key not in _WORKER_GENERATORS:
        _WORKER_GENERATORS[key] = Generator(Path(models_dir), precision=precision)
    return getattr(_WORKER_GENERATORS[key], method)(*args)


def _worker_duration(_key, _method, _args, rows: int, max_new_tokens: int) -> int:
    return zerogpu.duration_for(zerogpu.generation_seconds(rows, max_new_tokens))


# decorated when the module is imported, before the app launches: ZeroGPU looks for its
# functions at start-up (and keys its workers by the function); elsewhere this is _in_worker
_GPU_STEP = zerogpu.on_gpu(_in_worker, _worker_duration)


def _on_zerogpu(generator: Generator, method: str, args: tuple, rows: int, settings: GenSettings):
    key = (str(generator.models_dir), generator.precision)
    return _GPU_STEP(key, method, args, rows, settings.max_new_tokens)
