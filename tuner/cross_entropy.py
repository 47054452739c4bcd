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
(`use_for_training`); on a GPU transformers' fused kernels stay. DPO and KTO take their
log-probabilities (with the entropy and mean logit TRL logs) from the same kernel on a CPU, in
place of TRL's fused LM head (tuner.preference.log_probs_in_row_chunks_on_cpu).
`TUNER_CHUNKED_LOSS=0` turns both off on a CPU too (to compare, or to rule it out):
transformers' loss, or TRL's head, then, as run.json's summary says (`loss`).
"""

from __future__ import annotations

import os

import torch

CHUNK = 16  # rows a chunk: 16 × 49,152 fp32 = 3 MB, about a core's L2 cache


class ChunkedLogProbs(torch.autograd.Function):
    """log softmax(logits)[target] of each row (fp32), in chunks of CHUNK rows: each chunk is
    cast, reduced to its log-sum-exp and target logit, and in the backward pass turned into
    one-hot − softmax straight into the gradient's own dtype.

    With `stats`, also each row's entropy (differentiable), mean logit and whether the target is
    the first largest logit (neither differentiable): the per-token fields TRL's fused LM head
    returns beside the log-probabilities (tuner.preference.log_probs_in_row_chunks_on_cpu)."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, stats: bool = False):
        ctx.set_materialize_grads(False)
        n = logits.shape[0]
        lse = torch.empty(n, dtype=torch.float32, device=logits.device)
        picked = torch.empty_like(lse)
        if stats:
            entropy, mean, top1 = torch.empty_like(lse), torch.empty_like(lse), torch.empty_like(lse, dtype=torch.bool)
        for a in range(0, n, CHUNK):
            part = slice(a, a + CHUNK)
            rows = logits[part].float()
            lse[part] = torch.logsumexp(rows, dim=-1)
            picked[part] = rows.gather(1, targets[part, None])[:, 0]
            if stats:
                mean[part] = rows.mean(-1)
                top1[part] = rows.argmax(-1) == targets[part]  # argmax: the first of equal largest
                entropy[part] = lse[part] - (rows - lse[part, None]).exp_().mul_(rows).sum(-1)
        ctx.save_for_backward(logits, targets, lse, entropy if stats else lse)
        if not stats:
            return picked - lse
        ctx.mark_non_differentiable(mean, top1)
        return picked - lse, entropy, mean, top1

    @staticmethod
    def backward(ctx, grad_rows, grad_entropy=None, *_):
        logits, targets, lse, entropy = ctx.saved_tensors
        if grad_rows is None and grad_entropy is None:
            return None, None, None
        grad = torch.empty_like(logits)
        # d log p_t / dz_j = 1[j = t] − p_j; d entropy / dz_j = −p_j (log p_j + entropy)
        for a in range(0, logits.shape[0], CHUNK):
            part = slice(a, a + CHUNK)
            log_p = logits[part].float() - lse[part, None]
            if grad_entropy is None:
                out = log_p.exp_().mul_(-grad_rows[part, None])
            else:
                probs = log_p.exp()
                factor = log_p.add_(entropy[part, None]).mul_(grad_entropy[part, None])
                if grad_rows is not None:
                    factor.add_(grad_rows[part, None])
                out = probs.mul_(factor).neg_()
            if grad_rows is not None:
                out[torch.arange(out.shape[0], device=out.device), targets[part]] += grad_rows[part]
            grad[part] = out
        return grad, None, None


def nll_sum(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Sum over rows of −log softmax(logits)[label], rows whose label is `ignore_index` left out
    (masked, not multiplied: with no labelled row the loss is 0/0 and its gradient inf, and the
    ignored rows must still get 0, as transformers' loss gives them)."""
    valid = labels != ignore_index
    log_probs = ChunkedLogProbs.apply(logits, torch.where(valid, labels, torch.zeros_like(labels)))
    return -log_probs.masked_fill(~valid, 0).sum()


def causal_lm_loss(logits, labels, vocab_size: int, num_items_in_batch=None, ignore_index: int = -100,
                   shift_labels=None, **kwargs) -> torch.Tensor:
    """transformers' ForCausalLMLoss (same arguments, same value), computed in chunks."""
    if shift_labels is None:  # tokens < n predict n
        labels = torch.nn.functional.pad(labels, (0, 1), value=ignore_index)
        shift_labels = labels[..., 1:].contiguous()
    flat = logits.reshape(-1, vocab_size)
    targets = shift_labels.reshape(-1).to(flat.device)
    total = nll_sum(flat, targets, ignore_index)
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
