"""The causal-LM loss in row chunks, without a full-size fp32 copy of the logits.

transformers' ForCausalLMLoss casts all logits to fp32 (576 labelled tokens × 49,152
vocabulary entries: 113 MB), takes their log-softmax (another 113 MB) and in the
backward pass fills a zero gradient of that size, scatters into it, runs the
log-softmax backward and casts the result back: six passes over buffers far larger
than a CPU's caches. Here each chunk of 16 rows is cast, reduced to its log-sum-exp
and label logit, and in the backward pass turned into softmax − one-hot straight
into the gradient's own dtype: the same fp32 arithmetic, chunk-sized temporaries.

Measured on a 2-core Xeon with AMX (576 × 49,152 bf16 logits, forward + backward):
faster than transformers' loss, a visible share off a SmolLM2 step (figures: see
docs/performance.md); the loss equal to fp32 rounding, the gradient to bf16's. Used for training on a CPU
(`use_for_training`); on a GPU transformers' fused kernels stay. `TUNER_CHUNKED_LOSS=0` turns it
off on a CPU too (to compare, or to rule it out): transformers' loss then, as run.json's summary
says (`loss`).
"""

from __future__ import annotations

import os

import torch

CHUNK = 16  # rows a chunk: 16 × 49,152 fp32 = 3 MB, about a core's L2 cache


class ChunkedCrossEntropy(torch.autograd.Function):
    """Sum over rows of −log softmax(logits)[label], rows whose label is `ignore_index` left out."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor, ignore_index: int):
        valid = labels != ignore_index
        safe = torch.where(valid, labels, torch.zeros_like(labels))
        lse = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
        total = torch.zeros((), dtype=torch.float32, device=logits.device)
        for a in range(0, logits.shape[0], CHUNK):
            rows = logits[a:a + CHUNK].float()
            lse[a:a + CHUNK] = torch.logsumexp(rows, dim=-1)
            picked = rows.gather(1, safe[a:a + CHUNK, None])[:, 0]
            total += ((lse[a:a + CHUNK] - picked) * valid[a:a + CHUNK]).sum()
        ctx.save_for_backward(logits, safe, valid, lse)
        return total

    @staticmethod
    def backward(ctx, grad_total):
        logits, safe, valid, lse = ctx.saved_tensors
        grad = torch.empty_like(logits)
        # (where, not a product: with no labelled row the loss is 0/0 and its gradient inf,
        # and the ignored rows must still get 0, as transformers' loss gives them)
        scale = torch.where(valid, grad_total, torch.zeros_like(grad_total))
        for a in range(0, logits.shape[0], CHUNK):
            probs = (logits[a:a + CHUNK].float() - lse[a:a + CHUNK, None]).exp_()
            probs[torch.arange(probs.shape[0], device=probs.device), safe[a:a + CHUNK]] -= 1
            grad[a:a + CHUNK] = probs.mul_(scale[a:a + CHUNK, None])
        return grad, None, None


def causal_lm_loss(logits, labels, vocab_size: int, num_items_in_batch=None, ignore_index: int = -100,
                   shift_labels=None, **kwargs) -> torch.Tensor:
    """transformers' ForCausalLMLoss (same arguments, same value), computed in chunks."""
    if shift_labels is None:  # tokens < n predict n
        labels = torch.nn.functional.pad(labels, (0, 1), value=ignore_index)
        shift_labels = labels[..., 1:].contiguous()
    flat = logits.reshape(-1, vocab_size)
    targets = shift_labels.reshape(-1).to(flat.device)
    total = ChunkedCrossEntropy.apply(flat, targets, ignore_index)
    if num_items_in_batch is not None:
        if torch.is_tensor(num_items_in_batch):
            num_items_in_batch = num_items_in_batch.to(total.device)
        return total / num_items_in_batch
    return total / (targets != ignore_index).sum()  # "mean" over the labelled rows (NaN when none, as there)


OFF = ("0", "false", "no", "off")  # TUNER_CHUNKED_LOSS values that turn it off


def switched_off() -> bool:
    """Whether TUNER_CHUNKED_LOSS turns the chunked loss off (0, false, no or off); read at each
    run's start, as TUNER_PACKED_KERNEL is at each forward pass."""
    return os.environ.get("TUNER_CHUNKED_LOSS", "").strip().lower() in OFF


def use_for_training(model) -> bool:
    """Give a causal LM on the CPU this loss (its own loss type must be the plain causal-LM
    one) unless TUNER_CHUNKED_LOSS turns it off; True when it did. The loss is the same
    function: the model serves as before."""
    if switched_off():
        return False
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base, "loss_type", None) not in (None, "ForCausalLM"):
        return False
    if not hasattr(base, "loss_function") or next(base.parameters()).device.type != "cpu":
        return False
    base.loss_function = causal_lm_loss
    return True
