"""Turning chat messages into tokens with the model's own chat template."""

from __future__ import annotations

import torch

IGNORE = -100

# For models that ship without a chat template (older base models): ChatML,
# the format SmolLM2 itself uses.
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def ensure_chat_template(tokenizer) -> None:
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = CHATML


def encode_example(messages: list[dict], tokenizer, max_length: int) -> dict | None:
    """input_ids and labels for one conversation, loss on assistant tokens only.

    Each assistant span is found by rendering the conversation up to that turn
    with and without it, and mapping character spans to tokens through the
    fast tokenizer's offsets: this works for any template whose rendering of a
    prefix is a prefix of the whole. Returns None when truncation leaves no
    assistant token to learn from.
    """
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        start = len(tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True))
        end = len(tokenizer.apply_chat_template(messages[: i + 1], tokenize=False))
        spans.append((start, end))
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True,
                    truncation=True, max_length=max_length)
    labels = []
    for token_id, (a, b) in zip(enc["input_ids"], enc["offset_mapping"]):
        inside = any(s <= a and b <= e and b > a for s, e in spans)
        labels.append(token_id if inside else IGNORE)
    if all(label == IGNORE for label in labels):
        return None
    return {"input_ids": enc["input_ids"], "labels": labels}


def encode_prompt(messages: list[dict], tokenizer) -> list[int]:
    """Token ids of a conversation ready for the assistant's next reply."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


class PadCollator:
    """Pads a batch to its longest example (not to max_length): no wasted compute."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id
        self.tokens = 0  # useful (non-padding) tokens served

    def __call__(self, features: list[dict]) -> dict:
        width = max(len(f["input_ids"]) for f in features)
        self.tokens += sum(len(f["input_ids"]) for f in features)
        ids, labels, mask = [], [], []
        for f in features:
            n = len(f["input_ids"])
            ids.append(list(f["input_ids"]) + [self.pad_token_id] * (width - n))
            labels.append(list(f["labels"]) + [IGNORE] * (width - n))
            mask.append([1] * n + [0] * (width - n))
        return {
            "input_ids": torch.tensor(ids),
            "labels": torch.tensor(labels),
            "attention_mask": torch.tensor(mask),
        }


class PackCollator:
    """Padding-free batches: the examples of a batch are laid end to end in one
    row, with position_ids restarting at 0 for each. With no attention_mask,
    transformers builds a block-diagonal causal mask from the position_ids, so
    examples never attend to each other and no compute goes to pad tokens.

    With `labelled_logits_only`, the batch also says which positions predict a
    labelled (assistant) token: `logits_to_keep`, a boolean mask the model
    applies before its output head, and `shift_labels`, those positions'
    targets. The vocabulary projection and the loss then run on the assistant's
    tokens only (the prompt's logits would be ignored by the loss anyway); the
    loss is the same. Needs a model whose forward takes `logits_to_keep`.

    With `boundaries`, the batch also carries where each example starts and ends
    (`cu_seq_lens_q`/`_k`, `max_length_q`/`_k`, flash-attention's names), which
    `tuner.packed_attention` uses to attend to each example on its own.

    With `multiple_of` > 1, the row is padded up to a multiple of it (a tail of
    pad tokens that is its own sequence, learns nothing and is not counted), and
    the positions kept for the output head are rounded up the same way (the extra
    ones have no target). Matrix shapes then repeat from batch to batch, and the
    CPU's matmul kernels (oneDNN builds one per shape) are reused instead of being
    built anew at every step (measured on SmolLM2-135M in bf16: see docs/performance.md).

    `tokens` counts the useful tokens served, for tokens-per-second figures.
    """

    def __init__(self, labelled_logits_only: bool = False, boundaries: bool = False, multiple_of: int = 1,
                 pad_token_id: int = 0):
        self.tokens = 0
        self.labelled_logits_only = labelled_logits_only
        self.boundaries = boundaries
        self.multiple_of = max(1, int(multiple_of))
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict]) -> dict:
        ids, labels, positions, edges = [], [], [], [0]
        for f in features:
            n = len(f["input_ids"])
            ids += list(f["input_ids"])
            # the first token of an example is never predicted from the previous example
            labels += [IGNORE] + list(f["labels"])[1:]
            positions += list(range(n))
            edges.append(edges[-1] + n)
        self.tokens += len(ids)
        tail = -len(ids) % self.multiple_of
        if tail:  # positions restart at 0: a sequence of its own, attended to by nothing else
            ids += [self.pad_token_id] * tail
            labels += [IGNORE] * tail
            positions += list(range(tail))
            edges.append(edges[-1] + tail)
        batch = {
            "input_ids": torch.tensor([ids]),
            "labels": torch.tensor([labels]),
            "position_ids": torch.tensor([positions]),
        }
        if self.boundaries:
            longest = max(b - a for a, b in zip(edges[:-1], edges[1:]))
            batch["cu_seq_lens_q"] = batch["cu_seq_lens_k"] = torch.tensor(edges, dtype=torch.int32)
            batch["max_length_q"] = batch["max_length_k"] = longest
        if self.labelled_logits_only:
            # position p predicts token p + 1: keep p where label p + 1 is learned
            targets = torch.tensor([labels[1:] + [IGNORE]])
            keep = targets.ne(IGNORE)
            extra = -int(keep.sum()) % self.multiple_of
            if extra:  # round the head's rows up with positions that have no target
                keep[0, keep[0].logical_not().nonzero()[:extra, 0]] = True
            batch["logits_to_keep"] = keep
            batch["shift_labels"] = targets[keep]
        return batch
