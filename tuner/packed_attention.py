"""Attention for padding-free packed batches that costs what the examples cost.

A packed batch lays its examples end to end in one row. Plain SDPA then works on
the whole row: a dense (total × total) block-diagonal mask, so four 200-token
examples cost as much attention as one 800-token example, and the masked
kernel cannot skip the causal upper triangle. Here each example is attended
on its own, with `is_causal=True` and no mask (the fast kernel path), from the
example boundaries the collator passes as `cu_seq_lens_q` (the name
flash-attention's variable-length kernels use, so the same batches also suit
`flash_attention_2` on a GPU). Profiled on SmolLM2-135M (2 CPU cores, bf16):
attention went from 28% to 19% of a training step's CPU time, ~20% off the whole
step, with the same loss (CPU flash attention has a high fixed cost per call, so
four short sequences cost less than one long one, but not four times less).

It is registered without a mask function, so transformers builds no mask for it
(a total × total mask per forward cost ~5% of a step): it therefore only serves
packed rows with boundaries and refuses anything else (padded batches, generation)
rather than attend across padding; train() switches the model back to SDPA at the
end. Models whose attention is more than plain causal SDPA (sliding windows, logit
soft-capping, attention sinks, position biases) stay on SDPA:
`use_for_packed_training` says no.
"""

from __future__ import annotations

import torch

NAME = "tuner_packed_sdpa"


def packed_sdpa_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                        is_causal=None, **kwargs):
    from transformers.integrations.sdpa_attention import repeat_kv

    bounds = kwargs.get("cu_seq_lens_q")
    special = [k for k in ("sliding_window", "softcap", "s_aux", "position_bias") if kwargs.get(k) is not None]
    if special:
        raise ValueError(f"attention {NAME!r} is plain causal attention; this model also needs "
                         f"{', '.join(special)}: keep it on 'sdpa'")
    if bounds is None or query.shape[0] != 1:
        raise ValueError(f"attention {NAME!r} serves packed rows with example boundaries (cu_seq_lens_q, "
                         "from PackCollator(boundaries=True)) only; for other batches switch the model "
                         "back with set_attn_implementation('sdpa')")
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    edges = example_edges(bounds)
    parts = [torch.nn.functional.scaled_dot_product_attention(
        query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], dropout_p=dropout, scale=scaling, is_causal=True)
        for a, b in zip(edges[:-1], edges[1:]) if b > a]
    out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)
    return out.transpose(1, 2).contiguous(), None


_last_edges: tuple = (None, None)  # (the boundaries tensor, its values as a list)


def example_edges(bounds) -> list[int]:
    """The boundaries as Python ints, read once per forward pass: every decoder layer
    gets the same `cu_seq_lens_q` tensor, and on a GPU each read is a device-to-host
    copy that waits for all queued work (one sync per layer before; one per step now)."""
    global _last_edges
    if not isinstance(bounds, torch.Tensor):
        return list(bounds)
    seen, edges = _last_edges
    if seen is not bounds:  # (the tensor is held here, so its identity cannot be reused)
        edges = bounds.tolist()
        _last_edges = (bounds, edges)
    return edges


def register() -> str:
    """Make the implementation known to transformers (idempotent) and return its name.

    No mask function is registered with it: transformers then builds no mask."""
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, packed_sdpa_forward)
    return NAME


def use_for_packed_training(model) -> bool:
    """Switch a model on SDPA to per-example attention; False (and unchanged) where
    its attention is something else (eager, flash-attention, a custom kernel)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config
    if getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    layer_types = getattr(config, "layer_types", None) or []
    if (getattr(config, "sliding_window", None) or getattr(config, "attn_logit_softcapping", None)
            or any(kind != "full_attention" for kind in layer_types)):
        return False  # attention beyond plain causal SDPA: keep transformers' own
    try:
        base.set_attn_implementation(register())
    except (ValueError, AttributeError):  # an architecture that cannot switch at run time
        return False
    return base.config._attn_implementation == NAME


def restore_sdpa(model) -> None:
    """Back to transformers' SDPA (after training), so the model serves any batch again."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base.config, "_attn_implementation", None) == NAME:
        base.set_attn_implementation("sdpa")
