"""Preference tuning, DPO or KTO, on TRL's trainers (not a home-made loss), beside the
supervised LoRA recipe of tuner.train: the same run folder, run.json and metrics.jsonl.

A preference dataset is JSONL in TRL's standard shapes, one example a line:

    DPO  {"prompt": …, "chosen": …, "rejected": …}
    KTO  {"prompt": …, "completion": …, "label": true | false}

`prompt` is a string or a list of chat messages (the conversation up to the reply);
`chosen`, `rejected` and `completion` a string or a list of one assistant message.
Other keys (where a row came from: its models, scores, source) are kept in the run's
files and not trained on. The Results tab's preference export writes these shapes, and
the Train tab builds them from an evaluation's scores (ratings.preferences).

The run continues from a finished LoRA run's adapter (`init_adapter`: the usual
SFT → DPO order), which is then also the reference model (TRL copies it as a frozen
"ref" adapter), or starts a new adapter over the base, whose reference is the base.
"""

from __future__ import annotations

import functools
import json
import random
from pathlib import Path

from tuner import data as tdata
from tuner import records

SHAPES = {"dpo": ("prompt", "chosen", "rejected"), "kto": ("prompt", "completion", "label")}
# fewer than this and a run learns noise: a handful of pairs moves a 135M model nowhere useful
MIN_EXAMPLES = {"dpo": 8, "kto": 8}
MIN_EACH_KTO = 2  # desirable and undesirable examples KTO needs at least of each


def method_of_row(row: dict) -> str | None:
    """Which shape a row has: "dpo", "kto" or None."""
    for method, keys in SHAPES.items():
        if all(k in row for k in keys):
            return method
    return None


def _messages(value, field: str, prompt: bool) -> list[dict]:
    """A prompt or a reply as chat messages; ValueError naming the field when it is neither."""
    if isinstance(value, str):
        if not value.strip():
            raise ValueError(f"'{field}' is empty")
        return [{"role": "user" if prompt else "assistant", "content": value}]
    if not isinstance(value, list) or not value:
        raise ValueError(f"'{field}' must be a string or a non-empty list of messages (got {type(value).__name__})")
    for i, m in enumerate(value):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise ValueError(f"'{field}' message {i + 1} must be an object with string 'role' and 'content'")
        if m["role"] not in ("system", "user", "assistant"):
            raise ValueError(f"'{field}' message {i + 1} has the role {m['role']!r}: use system, user or assistant")
    if prompt and value[-1]["role"] != "user":
        raise ValueError(f"'{field}' must end with a user message (its last is {value[-1]['role']!r})")
    if not prompt and (len(value) != 1 or value[0]["role"] != "assistant" or not value[0]["content"].strip()):
        raise ValueError(f"'{field}' must be one non-empty assistant message")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def normalise(row, method: str) -> dict:
    """One row in the conversational form TRL trains on, with its other keys kept;
    ValueError saying what is wrong with it."""
    if not isinstance(row, dict):
        raise ValueError(f"each line must be a JSON object (got {type(row).__name__})")
    found = method_of_row(row)
    if found != method:
        keys = ", ".join(SHAPES[method])
        other = f" (it has the {found.upper()} shape: choose method '{found}')" if found else ""
        raise ValueError(f"a {method.upper()} example needs the keys {keys}{other}; it has {', '.join(row) or 'none'}")
    out = dict(row)
    out["prompt"] = _messages(row["prompt"], "prompt", prompt=True)
    if method == "dpo":
        out["chosen"] = _messages(row["chosen"], "chosen", prompt=False)
        out["rejected"] = _messages(row["rejected"], "rejected", prompt=False)
        if out["chosen"][0]["content"].strip() == out["rejected"][0]["content"].strip():
            raise ValueError("'chosen' and 'rejected' are the same reply: there is nothing to prefer")
    else:
        out["completion"] = _messages(row["completion"], "completion", prompt=False)
        if not isinstance(row["label"], bool):
            raise ValueError(f"'label' must be true (desirable) or false (undesirable), got {row['label']!r}")
    return out


def load(path: Path, method: str) -> list[dict]:
    """Every example of a preference JSONL file, or one ValueError listing the bad lines
    (file and line named)."""
    path = Path(path)
    rows, problems = [], []
    for number, obj, problem in tdata.json_lines(tdata.read_text(path).text):
        try:
            if problem:
                raise ValueError(problem)
            rows.append(normalise(obj, method))
        except ValueError as exc:
            problems.append(f"line {number}: {exc}")
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ValueError(f"{path.name}: " + "; ".join(problems[:5]) + more)
    if not rows:
        raise ValueError(f"{path.name}: no examples")
    return rows


def prompt_key(row: dict) -> str:
    """What identifies a row's prompt: its last user message, trimmed."""
    return next(m["content"] for m in reversed(row["prompt"]) if m["role"] == "user").strip()


def too_few(method: str, rows: list[dict]) -> str | None:
    """Why `rows` are too few to train `method` on, in words; None when they will do."""
    need = MIN_EXAMPLES[method]
    if method == "dpo":
        if len(rows) < need:
            return (f"{len(rows)} preference pair{'s' if len(rows) != 1 else ''}: DPO needs at least {need}. "
                    "Rate more prompts, lower the score margin, or correct low-rated replies.")
        return None
    good = sum(bool(r["label"]) for r in rows)
    bad = len(rows) - good
    if len(rows) < need or good < MIN_EACH_KTO or bad < MIN_EACH_KTO:
        return (f"{good} desirable and {bad} undesirable example(s): KTO needs at least {need} in all and "
                f"{MIN_EACH_KTO} of each. Rate more replies or move the thresholds.")
    return None


def split(rows: list[dict], validation_fraction: float, test_fraction: float, seed: int) -> dict[str, list[dict]]:
    """train/validation/test by prompt, seeded: every example of one prompt lands in one part."""
    keys = sorted({prompt_key(r) for r in rows})
    random.Random(seed).shuffle(keys)
    parts = tdata.splits([{"key": k} for k in keys], validation_fraction, test_fraction, seed)
    where = {item["key"]: name for name, items in parts.items() for item in items}
    return {name: [r for r in rows if where[prompt_key(r)] == name] for name in parts}


def split_for_run(rows: list[dict], method: str, validation_fraction: float, test_fraction: float, seed: int,
                  continues: bool) -> tuple[dict[str, list[dict]], str | None]:
    """The split a run makes (set_up's, and the Train tab's counts line before Start), and why
    what is left to train on is too few, in words (None when it will do). A run that continues
    an earlier one holds out no test prompts: Compare's are that run's (see held_out)."""
    parts = split(rows, validation_fraction, 0.0 if continues else test_fraction, seed)
    problem = too_few(method, parts["train"])
    return parts, (f"after holding out the validation and test prompts, {problem}" if problem else None)


# the LoRA settings a run that continues an adapter takes from it, whatever its config said
ADAPTER_SETTINGS = ("r", "lora_alpha", "lora_dropout", "target_modules", "use_dora", "use_rslora")


def adapter_settings(run_dir: Path) -> dict:
    """A finished run's adapter as it was trained (its adapter_config.json), by TrainConfig's names."""
    peft = records.adapter_config(run_dir)
    targets = peft.get("target_modules")
    return {"r": int(peft["r"]), "lora_alpha": peft["lora_alpha"], "lora_dropout": float(peft.get("lora_dropout") or 0),
            "target_modules": sorted([targets] if isinstance(targets, str) else targets or []) or None,
            "use_dora": bool(peft.get("use_dora")), "use_rslora": bool(peft.get("use_rslora"))}


def continued(config):
    """`config` with the LoRA settings of the adapter it continues (init_adapter): the run trains
    that adapter as it is, so run.json records its rank, alpha and modules, not the form's."""
    import dataclasses

    if not config.init_adapter or config.method not in SHAPES:
        return config
    return dataclasses.replace(config, **adapter_settings(init_run_folder(config.init_adapter, config.base_model)))


# Each trained token's cost beside a supervised run's (forward and backward): DPO adds the
# reference model's forward pass over the same tokens; KTO adds it too, and the forward
# passes of the policy and the reference over the mismatched pairs of its KL estimate.
COST = {"dpo": 4 / 3, "kto": 2.0}


@functools.lru_cache(maxsize=4)
def _tokenizer(location: str):
    from transformers import AutoTokenizer

    from tuner.chat import ensure_chat_template

    tokenizer = AutoTokenizer.from_pretrained(location)
    ensure_chat_template(tokenizer)
    return tokenizer


def row_tokens(row: dict, method: str, tokenizer, max_length: int) -> int:
    """The tokens TRL trains on for one example (its trainers count the same): prompt and
    reply, each pair's two, cut at max_length."""
    replies = ("chosen", "rejected") if method == "dpo" else ("completion",)
    return sum(min(max_length, len(tokenizer.apply_chat_template(row["prompt"] + row[k], tokenize=True,
                                                                 return_dict=True)["input_ids"]))
               for k in replies)


def estimate(config, rows: list[dict], models_dir: Path, past_runs: list[dict]) -> dict:
    """How long a DPO or KTO run of `config` on `rows` takes, in tuner.estimate's terms (its
    describe() words it): from the newest past run of the same method and model where one
    recorded its tokens and time, else from the machine's rough rate."""
    import math

    from tuner import estimate as testimate
    from tuner import models
    from tuner.phases import count_parameters

    config = continued(config)
    source = models.resolve(config.base_model, models_dir)
    trainable, total = count_parameters(config, source.location)
    parts, _problem = split_for_run(rows, config.method, config.validation_fraction, config.test_fraction,
                                    config.seed, bool(config.init_adapter))
    tokenizer = _tokenizer(source.location)
    count = {name: sum(row_tokens(r, config.method, tokenizer, config.max_seq_length) for r in parts[name])
             for name in ("train", "validation")}
    train_rows = len(parts["train"])
    per_step = config.per_device_train_batch_size * config.gradient_accumulation_steps
    steps_per_epoch = max(1, math.ceil(train_rows / per_step))
    if config.max_steps > 0:
        steps, epochs = config.max_steps, config.max_steps / steps_per_epoch
    else:
        epochs = config.num_train_epochs
        steps = math.ceil(steps_per_epoch * epochs)
    speed, whole_run = testimate.measured_speed(config, past_runs)
    measured = speed is not None
    speed = speed or testimate.CPU_FLOPS / (6 * total * COST[config.method])
    seconds = count["train"] * epochs / speed
    if not whole_run:
        seconds += testimate.overhead_seconds(config, steps, count["validation"], speed, total)
    return {"trainable": trainable, "total": total, "percent": 100 * trainable / total, "train_rows": train_rows,
            "steps": steps, "seconds": seconds, "tokens_per_second": speed, "measured": measured}


def as_chat(row: dict, method: str) -> dict | None:
    """A preference example as a chat row (its prompt and the preferred reply), for the run's
    held-out files; None for a KTO example with an undesirable completion."""
    if method == "kto" and not row["label"]:
        return None
    reply = row["chosen"] if method == "dpo" else row["completion"]
    return {"messages": row["prompt"] + reply}


def held_out(parts: dict[str, list[dict]], method: str, init_run: Path | None) -> dict[str, list[dict]]:
    """The run's validation.jsonl and test.jsonl rows (chat rows, one per prompt).

    test: from the base, the test split's prompts; from an earlier run, that run's own
    held-out test rows whose prompt this run did not learn from, so Compare's held-out
    prompts are ones neither run trained on."""
    learned = {prompt_key(r) for name in ("train", "validation") for r in parts[name]}

    def one_per_prompt(rows):
        seen, out = set(), []
        for row in rows:
            chat = as_chat(row, method)
            if chat and prompt_key(row) not in seen:
                seen.add(prompt_key(row))
                out.append(chat)
        return out

    test = one_per_prompt(parts["test"])
    if init_run is not None:
        file = records.held_out_file(init_run, "test")
        earlier = tdata.load_jsonl(file).rows if file.is_file() and file.stat().st_size else []
        test = [r for r in earlier if tdata.last_user_text(r).strip() not in learned]
    return {"validation": one_per_prompt(parts["validation"]), "test": test}


def trained_file(run_dir: Path) -> Path:
    """preference.jsonl: the examples a preference run trained on, as given."""
    return Path(run_dir) / "preference.jsonl"


def trained_prompts(run_dir: Path) -> set[str]:
    """The prompts (last user message) a preference run learned from; empty for other runs."""
    file = trained_file(run_dir)
    if not file.is_file():
        return set()
    keys = set()
    for line in file.read_text(encoding="utf-8").splitlines():
        if line.strip():
            keys.add(prompt_key(json.loads(line)))
    return keys


def training_rows(rows: list[dict], method: str) -> list[dict]:
    """The rows as TRL reads them: the shape's keys only (provenance stays in preference.jsonl)."""
    return [{k: r[k] for k in SHAPES[method]} for r in rows]


def length_grouped(rows: list[dict], method: str, batch_size: int, seed: int) -> list[dict]:
    """The training rows in batches of similar length, the batches in a seeded random order (what
    transformers' group_by_length sampler does, here for rows TRL reads in order).

    A batch is padded to its longest row, and every layer computes the padding: in the file's
    order, KTO on the bench's 96 examples took 246.8 s against 218.5 s (docs/performance.md). KTO
    needs its rows in a fixed order (its KL estimate pairs each prompt with the previous row's
    reply, see _apart), so the order is made here, once, for both methods."""
    rng = random.Random(seed)
    order = list(rows)
    rng.shuffle(order)  # rows of one length in a random order, not the file's

    def length(row: dict) -> int:
        replies = [row[k] for k in SHAPES[method][1:] if k != "label"]
        return len(json.dumps(row["prompt"])) + max(len(json.dumps(r)) for r in replies)

    order.sort(key=length)
    size = max(1, batch_size)
    whole = len(order) - len(order) % size
    batches = [order[i:i + size] for i in range(0, whole, size)]
    rng.shuffle(batches)  # a short last batch stays last: the trainer cuts batches from the start
    return [row for batch in batches + [order[whole:]] for row in _apart(batch)]


def _apart(batch: list[dict]) -> list[dict]:
    """The batch with the rows of one prompt not next to each other where it can be: KTO's KL
    estimate pairs each row's prompt with the previous row's reply (the first with the last's),
    and sorting by length brings the samples of one prompt together; a prompt paired with its
    own sample would not be a mismatched pair. The largest groups go to every other place."""
    groups: dict[str, list[dict]] = {}
    for row in batch:
        groups.setdefault(prompt_key(row), []).append(row)
    ordered = [row for group in sorted(groups.values(), key=len, reverse=True) for row in group]
    places = list(range(0, len(batch), 2)) + list(range(1, len(batch), 2))
    out: list[dict] = [None] * len(batch)
    for place, row in zip(places, ordered):
        out[place] = row
    return out


def init_run_folder(init_adapter: str, base_model: str) -> Path:
    """The finished run an adapter continues from, checked: it exists, has an adapter, is a
    LoRA-family run of the same base model."""
    run_dir = Path(init_adapter)
    if run_dir.name == "adapter":  # the adapter folder itself was given
        run_dir = run_dir.parent
    if not records.has_adapter(run_dir):
        raise ValueError(f"init_adapter: {init_adapter} is not a finished run folder with an adapter")
    config = (records.read_record(run_dir) or {}).get("config", {})
    if config.get("method", "lora") == "prompt_tuning":
        raise ValueError(f"init_adapter: {run_dir.name} is a prompt-tuning run; preference tuning continues a "
                         "LoRA adapter")
    if config.get("base_model") and config["base_model"] != base_model:
        raise ValueError(f"init_adapter: {run_dir.name} was trained on {config['base_model']}, not {base_model}")
    return run_dir


# --- the run's phases: setup and trainer, of tuner.phases' parts (tuner.train runs them) ----------
def set_up(config, run_dir: Path, models_dir: Path, control):
    """The base model with the adapter it trains (a run's, to continue, or a new one), and the
    preference rows split by prompt, held out and written to the run folder."""
    from datasets import Dataset
    from peft import PeftModel, get_peft_model

    from tuner import models, phases
    from tuner.paths import atomic_write_text

    rows = load(Path(config.dataset), config.method)
    init_run = init_run_folder(config.init_adapter, config.base_model) if config.init_adapter else None
    parts, problem = split_for_run(rows, config.method, config.validation_fraction, config.test_fraction,
                                   config.seed, init_run is not None)
    if problem:
        raise ValueError(f"{Path(config.dataset).name}: {problem}")
    source = models.resolve(config.base_model, models_dir)
    precision = phases.resolve_precision(config.precision)
    model, tokenizer = phases.load_base(config, source, precision)
    kept = held_out(parts, config.method, init_run)
    records.write_held_out(run_dir, kept)
    atomic_write_text(trained_file(run_dir), tdata.to_jsonl(parts["train"]))
    if init_run is not None:
        # trainable: the run goes on from the adapter's weights; TRL keeps a frozen copy as the reference
        model = PeftModel.from_pretrained(model, str(records.adapter_dir(init_run)), is_trainable=True)
        targets = sorted(model.peft_config["default"].target_modules)
    else:
        targets = config.target_modules or phases.detect_target_modules(model)[0]
        model = get_peft_model(model, phases.peft_config(config, targets, source.location),
                               autocast_adapter_dtype=True)
    trainable, total = model.get_nb_trainable_parameters()
    start = f"from {init_run.name}'s adapter" if init_run else "from a new adapter"
    control.update(message=f"{config.method.upper()} {start}: training {trainable:,} of {total:,} parameters")
    train_set = Dataset.from_list(training_rows(
        length_grouped(parts["train"], config.method, config.per_device_train_batch_size, config.seed), config.method))
    eval_set = Dataset.from_list(training_rows(parts["validation"], config.method))
    parts = {**parts, "test": kept["test"]}  # what the summary counts as held out for Compare
    return phases.Setup(precision, model, tokenizer, parts, train_set, eval_set, 0, targets, trainable, total)


def score_completions_only_on_cpu() -> bool:
    """TRL's fused LM head (trl.trainer.utils.add_fused_lm_head, which DPO and KTO use for
    their log-probabilities) scores only the completion positions on Triton devices; on
    others it scores every position, prompt and padding included, because on Neuron a number
    of valid positions that changes from batch to batch recompiles the tile shapes. A CPU has
    no such compilation, so here it takes the completion-only path too: the same
    log-probabilities (the same losses to the last digit: tests/test_preference.py) from
    fewer rows. KTO on the bench's 96 examples: 281.5 -> 218.5 s (docs/performance.md).

    TRL decides this with `_use_triton(device)`, looked up in trl.trainer.utils on each
    forward: that name, for the CPU only, is what changes (TRL is pinned in requirements.txt;
    False when a TRL without it is installed, and the test says so)."""
    try:
        from trl.trainer import utils as trl_utils
    except ImportError:
        return False
    original = getattr(trl_utils, "_use_triton", None)
    if original is None or not callable(original):
        return False
    if getattr(original, "tuner_cpu_compact", False):
        return True

    def compact_on_cpu_too(device) -> bool:
        return device.type == "cpu" or original(device)

    compact_on_cpu_too.tuner_cpu_compact = True
    trl_utils._use_triton = compact_on_cpu_too
    return True


# the most memory log_probs_in_row_chunks_on_cpu gives a batch's logits: they are kept for the
# backward pass, which adds a gradient of their size (SmolLM2 in bf16: 5,461 scored positions);
# more goes to TRL's tiles
LOGITS_BUDGET = 2 ** 30
# how many of TRL's fused-head calls each path took since make_trainer: run.json's "loss"
SCORED_BY: dict[str, int] = {}
# the per-token fields of TRL's fused head it computes too (DPO asks for all four, KTO for the first
# three: the entropy and the mean logit are logged, is_top1 gives DPO's token accuracy)
ROW_CHUNK_OUTPUTS = ("log_probs", "entropy", "mean_logits", "is_top1")


def log_probs_in_row_chunks_on_cpu() -> bool:
    """On a CPU, TRL's fused LM head (its _ChunkedLogProbFunction) projects the scored positions
    onto the vocabulary in tiles of 32,768 entries and folds each tile into an online
    log-sum-exp with fp32 torch ops: for 1,200 positions a tile is 150 MB of fp32 that a dozen
    element-wise passes read and write, and the backward pass projects every tile again. Here,
    for the plain case (no bias, softcap, temperature or logit scale; not WPO's log_sum_sq_probs),
    the logits are one matmul (bf16 under autocast, as TRL's tiles) and their log-softmax, with
    the entropy, mean logit and top-1 flag TRL also returns, is taken 16 rows at a time
    (tuner.cross_entropy.ChunkedLogProbs, the SFT loss's kernel); the logits stay for the
    backward pass. SmolLM2's head over 1,200 positions with KTO's three outputs: forward 0.66 ->
    0.29 s, backward 1.45 -> 0.26 s (docs/performance.md); the same log-probabilities, the
    gradient to bf16's rounding (TRL accumulates the matmul of the logits' gradient in fp32, here
    it is a bf16 matmul's output): tests/test_preference.py.

    Anything else (another device, other outputs, mixed dtypes without autocast, logits and their
    gradient over LOGITS_BUDGET bytes) goes to TRL's function, and so does everything while
    TUNER_CHUNKED_LOSS=0 (read at each call, as the SFT loss reads it at each run's start: to
    compare, or to rule it out). Like score_completions_only_on_cpu, this replaces a name TRL
    looks up on each forward (pinned in requirements.txt); False when a TRL without it is installed."""
    try:
        from trl.trainer import utils as trl_utils
    except ImportError:
        return False
    original = getattr(trl_utils, "_ChunkedLogProbFunction", None)
    if original is None or not callable(getattr(original, "apply", None)):
        return False
    if getattr(original, "tuner_row_chunks", False):
        return True

    class RowChunksOnCpu:
        tuner_row_chunks = True
        trl_function = original

        @staticmethod
        def apply(hidden, weight, bias, targets, temperature, chunk_size, softcap=None, logit_scale=1.0,
                  outputs=("log_probs",)):
            import torch

            from tuner import cross_entropy

            autocast = torch.is_autocast_enabled("cpu")
            size = torch.finfo(torch.get_autocast_dtype("cpu") if autocast else hidden.dtype).bits // 8
            plain = (hidden.device.type == "cpu" and bias is None and softcap is None and temperature == 1
                     and logit_scale == 1 and set(outputs) <= set(ROW_CHUNK_OUTPUTS)
                     and (autocast or hidden.dtype == weight.dtype)  # TRL casts; F.linear would refuse
                     and 2 * hidden.shape[0] * weight.shape[0] * size <= LOGITS_BUDGET
                     and not cross_entropy.switched_off())
            path = "chunked" if plain else "trl"
            SCORED_BY[path] = SCORED_BY.get(path, 0) + 1
            if not plain:
                return original.apply(hidden, weight, bias, targets, temperature, chunk_size, softcap,
                                      logit_scale, outputs)
            logits = torch.nn.functional.linear(hidden, weight)
            if set(outputs) == {"log_probs"}:
                return cross_entropy.ChunkedLogProbs.apply(logits, targets), None, None, None, None
            log_probs, entropy, mean_logits, is_top1 = cross_entropy.ChunkedLogProbs.apply(logits, targets, True)
            return (log_probs, entropy if "entropy" in outputs else None, None,
                    mean_logits if "mean_logits" in outputs else None, is_top1 if "is_top1" in outputs else None)

    trl_utils._ChunkedLogProbFunction = RowChunksOnCpu
    return True


def scoring_paths() -> str:
    """run.json's "loss" for a DPO or KTO run: which path scored its log-probabilities, "chunked"
    (tuner.cross_entropy's row chunks), "trl" (TRL's fused head) or "chunked+trl", from the calls
    counted since make_trainer (one run trains at a time in a process)."""
    return "+".join(path for path in ("chunked", "trl") if SCORED_BY.get(path)) or "trl"


def make_trainer(config, run_dir: Path, setup, control, resume: bool):
    """TRL's DPOTrainer or KTOTrainer over the set-up model, with the run's arguments."""
    from transformers import PrinterCallback
    from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer

    from tuner import phases

    has_eval = len(setup.eval_set) > 0
    kwargs = phases.training_kwargs(config, run_dir, setup.precision, has_eval, packing=True)
    kwargs.update(beta=config.beta, max_length=config.max_seq_length, neftune_noise_alpha=None,
                  # TRL turns it on by default; a LoRA run of a small model has the memory, and recomputing
                  # every layer's forward in the backward pass cost much of a CPU step (py-spy: docs/performance.md)
                  gradient_checkpointing=False)
    # the rows in the order set_up made (length_grouped): batches of similar length; KTO's KL
    # estimate pairs each prompt with the previous row's reply, so TRL requires them in order anyway
    kwargs["train_sampling_strategy"] = "sequential"
    if config.method == "kto":
        args, trainer_class = KTOConfig(**kwargs), KTOTrainer
    else:
        if config.ld_alpha != 1.0:
            kwargs["ld_alpha"] = config.ld_alpha
        if config.rpo_alpha > 0:
            kwargs.update(loss_type=["sigmoid", "sft"], loss_weights=[1.0, config.rpo_alpha])
        args, trainer_class = DPOConfig(**kwargs), DPOTrainer
    if setup.precision in ("bf16", "fp16") and not config.use_dora:
        phases.skip_adapter_input_casts(setup.model)
    score_completions_only_on_cpu()
    log_probs_in_row_chunks_on_cpu()
    SCORED_BY.clear()  # run.json's "loss" counts this run's calls (scoring_paths)
    reporter = phases.reporting_callback(control, run_dir, None)
    trainer = trainer_class(model=setup.model, args=args, train_dataset=setup.train_set,
                            eval_dataset=setup.eval_set if has_eval else None, processing_class=setup.tokenizer,
                            callbacks=[reporter])
    trainer.remove_callback(PrinterCallback)
    return phases.Training(trainer, reporter, False, False, phases.resume_point(run_dir) if resume else None)
