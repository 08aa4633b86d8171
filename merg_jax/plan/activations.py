"""Activation memory of one training row, counted analytically from the config and the remat policy.

    act = llm_activations(llm_cfg, tokens=512, mesh_shape={"fsdp": 64, "tensor": 1})
    act.per_row_bytes            # bytes per device per batch row during the backward pass of stage a (coe)
    act.describe()               # the terms, per token

The LLM's layers run under `jax.lax.scan` with `jax.checkpoint(policy)` (`merg_jax.models.llm`). What the backward
pass keeps, per layer and per token, with `model.remat="dots_no_batch"`
(`jax.checkpoint_policies.dots_with_no_batch_dims_saveable`): every `Dense` is one 2-D matmul over all tokens
(`einsum("ni,io->no")`, no batch dimension), so every projection output the backward needs is saved —

    layer input (the scan carry)                   D
    q, k, v projection outputs                     Hq·hd + 2·Hkv·hd      (÷ tensor: heads are split)
    o projection output                            D                     (needed to rebuild the residual)
    gate and up projection outputs                 2·F                   (÷ tensor)
    per LoRA target: A·x and B·(A·x)               r + out               (out ÷ tensor where the base output is)

in the compute dtype. The down projection's output is not kept (it only feeds the residual add, whose result is the
next layer's saved input); the attention kernel's output is not kept either (a Pallas / blockwise `custom_vjp`, not
a matmul the policy sees): it is recomputed in the backward pass. Outside the scan (no remat) the head keeps the
final norm's float32 input and its output, and the float32 `exp(logits)` of the cross-entropy; its float32 logits
cotangent joins them at the peak. While one layer is differentiated, its recomputed forward and its cotangents
take about one more layer's saved set. `merg_jax.plan.crosscheck` compiles the real stage-a step on fake CPU devices:
the per-layer slope of `memory_analysis().temp_size_in_bytes` is within 1% of the layer count, and the per-row slope
within 1% of the row count, or below it by one float32 logits buffer where XLA writes the logits' cotangent over
`exp(logits)` (so the count is conservative by at most 4·V/tensor bytes per token). So, per row of T tokens,

    activations = T · (num_layers · layer + head + layer)

With `remat="full"` (`nothing_saveable`) a layer keeps only its input, and the layer being differentiated holds
the whole set above. `"none"` keeps every intermediate and is not modelled.

The frozen towers run forward only (no parameter below them trains), so they keep nothing for the backward pass;
`tower_bytes_per_row` is their transient working set, which peaks before the LLM's backward does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from merg_jax.models.llm_config import LlmConfig

F32 = 4
MODELLED_REMAT = ("dots_no_batch", "dots", "full")


@dataclasses.dataclass(frozen=True)
class Term:
    """One kept tensor: elements per token on one device (after tensor-parallel splitting) and their item size."""

    name: str
    elements: float
    itemsize: int

    @property
    def bytes(self) -> float:
        return self.elements * self.itemsize


@dataclasses.dataclass(frozen=True)
class ActivationModel:
    remat: str
    tokens: int  # positions per row the LLM runs over (seq_len + signal tokens)
    num_layers: int
    layer: tuple[Term, ...]  # kept per layer, per token
    head: tuple[Term, ...]  # kept outside the scan (final norm, logits), per token
    working: tuple[Term, ...]  # the layer being differentiated: its recomputed forward and cotangents, per token

    @property
    def layer_bytes_per_token(self) -> float:
        return sum(t.bytes for t in self.layer)

    @property
    def head_bytes_per_token(self) -> float:
        return sum(t.bytes for t in self.head)

    @property
    def working_bytes_per_token(self) -> float:
        return sum(t.bytes for t in self.working)

    @property
    def per_token_bytes(self) -> float:
        return self.num_layers * self.layer_bytes_per_token + self.head_bytes_per_token + self.working_bytes_per_token

    @property
    def per_row_bytes(self) -> float:
        return self.tokens * self.per_token_bytes

    def describe(self) -> list[tuple[str, float]]:
        """(term, bytes per token) rows: each layer term, then the head's, then the working set's total."""
        rows = [(f"per layer: {t.name}", t.bytes) for t in self.layer]
        rows += [(f"head: {t.name}", t.bytes) for t in self.head]
        rows.append(("the layer being differentiated (recomputed forward + cotangents)", self.working_bytes_per_token))
        return rows


def _split(size: int, heads_or_dim: int, tensor: int) -> float:
    """`size` elements split over `tensor` devices when the rule table can split them (the dimension divides)."""
    return size / tensor if tensor > 1 and heads_or_dim % tensor == 0 else float(size)


def _projection_terms(cfg: LlmConfig, tensor: int, itemsize: int) -> list[Term]:
    """What `dots_no_batch` keeps of one layer (the module docstring's list, minus the scan carry)."""
    d, f, hd, r = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim, cfg.lora_rank
    out = {
        "q": _split(cfg.num_heads * hd, cfg.num_heads, tensor),
        "k": _split(cfg.num_kv_heads * hd, cfg.num_kv_heads, tensor),
        "v": _split(cfg.num_kv_heads * hd, cfg.num_kv_heads, tensor),
        "o": float(d),  # summed over the tensor axis: every device holds all of D
        "gate": _split(f, f, tensor),
        "up": _split(f, f, tensor),
    }
    terms = [Term(f"{name}_proj output", size, itemsize) for name, size in out.items()]
    for target in cfg.lora_targets if r else ():
        terms.append(Term(f"lora {target}: A·x", float(r), itemsize))
        if target in out:  # down's B·(A·x) only feeds the residual add, like down's own output
            terms.append(Term(f"lora {target}: B·(A·x)", out[target], itemsize))
    return terms


def llm_activations(cfg: LlmConfig, *, tokens: int, mesh_shape: Mapping[str, int]) -> ActivationModel:
    """The activation model of the LLM's training step on a mesh (`tensor` splits heads, MLP and vocabulary;
    `data`/`fsdp` split rows, which `per_row_bytes` already is)."""
    if cfg.remat not in MODELLED_REMAT:
        raise ValueError(f"merg-jax plan: model.remat={cfg.remat!r} is not modelled; plan with one of "
                         f"{', '.join(MODELLED_REMAT)} (--config.model.remat=dots_no_batch)")
    tensor = int(mesh_shape.get("tensor", 1))
    item = np.dtype(cfg.dtype).itemsize
    d, v = cfg.hidden_size, cfg.vocab_size
    carry = Term("layer input (scan carry)", float(d), item)
    dots = _projection_terms(cfg, tensor, item)
    # "dots" saves batched matmuls too; the attention kernel's live inside its custom_vjp, so it keeps the same set.
    layer = (carry,) if cfg.remat == "full" else (carry, *dots)
    head = (Term("final norm input (float32)", float(d), F32), Term("final norm output", float(d), item),
            Term("exp(logits), float32 (cross-entropy)", _split(v, v, tensor), F32),
            Term("logits cotangent, float32", _split(v, v, tensor), F32))
    return ActivationModel(remat=cfg.remat, tokens=int(tokens), num_layers=cfg.num_layers, layer=layer, head=head,
                           working=(carry, *dots))


def tower_bytes_per_row(tower_cfg, *, inputs: int, tokens: int) -> float:
    """A frozen tower's forward working set for one row: `inputs` images / windows of `tokens` tokens each, one
    layer live at a time (scan), its input, q/k/v, attention output and MLP hidden in the compute dtype, plus the
    float32 input of the layer norm. An estimate: no gradient flows into a frozen tower, so nothing is kept."""
    if tower_cfg is None or inputs <= 0:
        return 0.0
    item = np.dtype(tower_cfg.dtype).itemsize
    h, i = tower_cfg.hidden_size, tower_cfg.intermediate_size
    return float(inputs * tokens * ((5 * h + i) * item + h * F32))


__all__ = ["ActivationModel", "MODELLED_REMAT", "Term", "llm_activations", "tower_bytes_per_row"]
