"""The plan written out: a table for the terminal, a JSON document, and docs/scaling.md.

    text = table(plan, crosscheck)          # what `merg-jax plan` prints
    doc = to_json(plan, crosscheck)         # --json FILE
    md = markdown(plan, crosscheck, command="merg-jax plan ...")   # --markdown docs/scaling.md
"""

from __future__ import annotations

from collections.abc import Sequence

from merg_jax.plan.fit import Plan, TargetPlan
from merg_jax.plan.hardware import GIB

MIB = 1 << 20


def _gib(x: float) -> str:
    return f"{x / GIB:.2f} GiB"


def _size(x: float) -> str:
    if x >= GIB:
        return f"{x / GIB:.2f} GiB"
    return f"{x / MIB:.1f} MiB" if x >= MIB else f"{x / 1024:.1f} KiB"


def _time(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.3g} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _recipe(plan: Plan) -> str:
    p = plan.targets[0]
    a = p.activations
    return (f"stage a ({p.stage}: trains {', '.join(p.state.groups)}), remat {a.remat}, {a.tokens} tokens per row, "
            f"recipe batch {p.recipe_batch}")


def target_rows(p: TargetPlan) -> list[tuple[str, str]]:
    """(quantity, value) rows of one target, the order of the table and the markdown."""
    t, planned, largest = p.target, p.planned_batch, p.max_global_batch
    batch_note = "" if planned == p.recipe_batch else f" (the recipe's {p.recipe_batch}, rounded up)"
    rows = [
        ("chips × HBM", f"{t.chips} × {t.hbm_gib:g} GiB"),
        ("mesh", t.mesh_text()),
        ("parameters (fp32, all)", _size(p.state.params_bytes)),
        ("Adam moments (trained only)", _size(p.state.optimizer_bytes)),
        ("gradients (trained only)", _size(p.state.gradient_bytes)),
        ("gathered weights (FSDP, bf16)", _size(p.gathered_bytes)),
        ("activations per row per device", _size(p.activations.per_row_bytes)),
        ("tower working set per row", _size(p.tower_bytes_per_row)),
        ("budget (HBM − reserve)", f"{_gib(p.budget_bytes)} (−{p.reserve:.0%})"),
        ("planned global batch", f"{planned}{batch_note}"),
        ("peak per device at planned batch", _gib(p.peak_bytes(planned))),
        ("fits", "yes" if p.fits else "NO"),
        ("largest global batch", f"{largest} ({p.max_rows_per_device} rows/device)"),
        ("MFU assumed", f"{p.mfu:.1%}"),
    ]
    if largest:
        tokens = p.activations.tokens
        rows += [
            ("step time at planned batch", _time(p.step_time(planned))),
            ("step time at largest batch", _time(p.step_time(largest))),
            ("tokens/s at largest batch", f"{largest * tokens / p.step_time(largest):,.0f}"),
            (f"stage a ({p.rows_to_train:,} rows) at largest batch", _time(p.stage_time(largest))),
        ]
    return rows


def _grid(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)])


def crosscheck_rows(crosscheck: Sequence[dict] | None) -> list[list[str]]:
    rows = []
    for m in crosscheck or ():
        mesh = " × ".join(f"{k}={v}" for k, v in m["mesh"].items() if v > 1)
        for key, what in (("layer_bytes_per_token", "bytes per layer per token"),
                          ("row_bytes_per_token", f"bytes per row per token ({m['row_bytes_per_token']['layers']} "
                                                  "layers)"),
                          ("argument_bytes", "arguments per device (state + batch)")):
            r = m[key]
            rows.append([mesh, what, f"{r['analytic']:,.0f}", f"{r['compiled']:,.0f}", f"{r['ratio'] - 1:+.1%}"])
    return rows


def table(plan: Plan, crosscheck: Sequence[dict] | None = None) -> str:
    """The terminal summary."""
    out = [f"merg-jax plan: {plan.config_name} — {_recipe(plan)}",
           f"{plan.param_count:,} parameters, {plan.targets[0].state.trainable_count:,} trained in stage a", ""]
    names = [p.target.name for p in plan.targets]
    per = [dict(target_rows(p)) for p in plan.targets]
    keys = [k for k, _ in target_rows(max(plan.targets, key=lambda p: len(target_rows(p))))]
    out.append(_grid(["per device", *names], [[k, *(d.get(k, "—") for d in per)] for k in keys]))
    if crosscheck:
        out += ["", "activation count vs XLA's compiled memory analysis (scaled-down stage-a step, 8 fake CPU "
                    "devices):",
                _grid(["mesh", "quantity", "counted", "compiled", "diff"], crosscheck_rows(crosscheck))]
    verdict = ", ".join(f"{p.target.name} {'fits' if p.fits else 'does NOT fit'} at batch {p.planned_batch} "
                        f"(largest {p.max_global_batch})" for p in plan.targets)
    out += ["", f"remat {plan.targets[0].activations.remat}: {verdict}"]
    return "\n".join(out)


def to_json(plan: Plan, crosscheck: Sequence[dict] | None = None, command: str = "") -> dict:
    first = plan.targets[0]
    doc = {"command": command, "config": plan.config_name, "stage": plan.stage, "param_count": plan.param_count,
           "trainable_count": first.state.trainable_count, "remat": first.activations.remat,
           "tokens_per_row": first.activations.tokens, "recipe_batch": first.recipe_batch,
           "rows_to_train": first.rows_to_train,
           "flops_per_row": {"model": first.flops.model_per_row, "hardware": first.flops.hardware_per_row,
                             "terms": dict(first.flops.describe()), "n_matmul": first.flops.n_matmul,
                             "n_lora": first.flops.n_lora},
           "targets": {}, "crosscheck": list(crosscheck or [])}
    for p in plan.targets:
        t = p.target
        largest = p.max_global_batch
        doc["targets"][t.name] = {
            "description": t.description, "chips": t.chips, "hbm_bytes": t.hbm_bytes, "peak_tflops": t.peak_tflops,
            "mesh": t.mesh, "why_mesh": t.why_mesh,
            "bytes_per_device": {"params": p.state.params_bytes, "optimizer": p.state.optimizer_bytes,
                                 "gradients": p.state.gradient_bytes, "gathered_weights": p.gathered_bytes,
                                 "activations_per_row": p.activations.per_row_bytes,
                                 "tower_working_set_per_row": p.tower_bytes_per_row,
                                 "budget": p.budget_bytes, "peak_at_planned_batch": p.peak_bytes(p.planned_batch)},
            "activation_terms_per_token": dict(p.activations.describe()),
            "stages": {s.stage: {"groups": list(s.groups), "trainable_count": s.trainable_count,
                                 "params_bytes": s.params_bytes, "optimizer_bytes": s.optimizer_bytes,
                                 "gradient_bytes": s.gradient_bytes} for s in p.stages},
            "reserve": p.reserve, "planned_batch": p.planned_batch, "rows_per_device_planned":
                p.rows_per_device(p.planned_batch), "fits": p.fits, "max_rows_per_device": p.max_rows_per_device,
            "max_global_batch": largest, "mfu": p.mfu, "mfu_source": p.mfu_source,
            "mfu_reference": {"mfu": t.reference.mfu, "what": t.reference.what, "source": t.reference.source},
            "step_time_s": {"planned_batch": p.step_time(p.planned_batch),
                            "largest_batch": p.step_time(largest) if largest else None},
            "stage_time_s_at_largest_batch": p.stage_time(largest) if largest else None,
        }
    return doc


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def logits_share(act) -> float:
    """One float32 logits buffer's share of a row's counted activations."""
    logits = next(t.bytes for t in act.head if t.name.startswith("logits cotangent"))
    return logits / act.per_token_bytes


def copy_logits_share(crosscheck: Sequence[dict]) -> float:
    """The same share on the cross-check's scaled copies (the largest over its meshes)."""
    return max(4 * m["scaled"]["vocab_size"] / m["mesh"].get("tensor", 1) / m["row_bytes_per_token"]["analytic"]
               for m in crosscheck)


def act_dtype(plan: Plan) -> str:
    cfg = plan.llm
    return f"{cfg.dtype} compute over {cfg.param_dtype} master weights"


def keep_batch_mesh(p: TargetPlan, cfg) -> dict[str, int] | None:
    """A data×fsdp×tensor mesh of the target's chips that places the recipe's batch unchanged (fsdp = the batch,
    tensor = the rest, at most 8 and dividing heads, MLP and vocabulary), or None."""
    chips, batch = p.target.chips, p.recipe_batch
    if chips % batch:
        return None
    tensor = chips // batch
    sizes = (cfg.num_heads, cfg.num_kv_heads, cfg.intermediate_size, cfg.vocab_size)
    if tensor > 8 or any(n % tensor for n in sizes):
        return None
    return {"data": 1, "fsdp": batch, "tensor": tensor}


def batch_notes(plan: Plan) -> list[str]:
    notes = []
    for p in plan.targets:
        if p.planned_batch == p.recipe_batch:
            rows = p.rows_per_device(p.planned_batch)
            notes.append(f"{p.target.name}: the recipe's batch of {p.recipe_batch} places as it is "
                         f"({rows} row{'s' if rows > 1 else ''} per device).")
            continue
        alt = keep_batch_mesh(p, plan.llm)
        keep = (f"`--config.mesh.fsdp={alt['fsdp']} --config.mesh.tensor={alt['tensor']}` keeps it, at the price "
                "of tensor-parallel all-reduces in every layer" if alt else
                "No mesh of these chips keeps it with tensor parallelism of 8 or less: train with the larger batch "
                "(and retune the learning rate) or on fewer chips")
        notes.append(f"{p.target.name}: {p.target.batch_shards}-way batch split, so the recipe's batch of "
                     f"{p.recipe_batch} cannot be placed; the smallest runnable batch is {p.planned_batch}. {keep}.")
    return notes


def markdown(plan: Plan, crosscheck: Sequence[dict] | None = None, command: str = "") -> str:
    """docs/scaling.md: the plan with its formulas, the cross-check and the sources of every assumed figure."""
    first = plan.targets[0]
    act, flops = first.activations, first.flops
    names = [p.target.name for p in plan.targets]
    per = [dict(target_rows(p)) for p in plan.targets]
    keys = [k for k, _ in target_rows(max(plan.targets, key=lambda p: len(target_rows(p))))]
    verdict = "; ".join(f"**{p.target.name}** ({p.target.mesh_text()}) {'fits' if p.fits else 'does NOT fit'} at "
                        f"global batch {p.planned_batch}, largest {p.max_global_batch}" for p in plan.targets)
    towers_share = flops.towers_forward / flops.model_per_row
    out = [
        "# Scaling plan: the paper's recipe on TPU pods and a GPU node",
        "",
        f"Written by `{command}` (`merg_jax/plan/`); run it again after "
        "changing the model, the sharding rules or the targets. Every per-device byte of the model state comes "
        "from the real rule table applied to the abstractly built model; activations and FLOPs are counted "
        "analytically (formulas below) and the activation count is checked against XLA's compiled memory analysis.",
        "",
        f"**Verdict** — {_recipe(plan)}, {act_dtype(plan)}: {verdict}.",
        "",
        f"The model has {plan.param_count:,} parameters; stage a trains {first.state.trainable_count:,} of them "
        f"({', '.join(first.state.groups)}). Stage a is the one planned: the LLM's forward and backward through "
        "LoRA. Stages b–d run the LLM forward only (their features are under `stop_gradient`, nothing below the "
        "CS/SD trains), so the LLM keeps no activations for them and stage a bounds the plan; their state is in "
        "the last table.",
        "",
        "## Per device",
        "",
        _md_table(["", *names], [[k, *(d.get(k, "—") for d in per)] for k in keys]),
        "",
        "Meshes:",
        "",
        *[f"- **{p.target.name}**: {p.target.mesh_text()} — {p.target.why_mesh}." for p in plan.targets],
        "",
        "Batch: the trainer splits every batch over `data × fsdp` (`merg_jax/train/batching.py`, `BATCH_SPEC`), so "
        "the global batch must be a multiple of that product; the planned batch is the recipe's rounded up to "
        "one.",
        "",
        *[f"- {line}" for line in batch_notes(plan)],
        "",
        "## Model state: parameters, Adam, gradients",
        "",
        "Built with `nnx.eval_shape` (no memory); each variable's logical axes go through "
        "`merg_jax.sharding.rules.logical_to_spec(names, shape=, mesh_shape=)` with the target's mesh shape, and its "
        "bytes are divided by the product of the mesh axes in the resulting PartitionSpec (a dimension the axes do "
        "not divide stays replicated: e.g. LoRA `B` of q/k/v, `(lora_rank, kv_heads)`, has no `fsdp` dimension and "
        "is replicated on a pure-FSDP mesh). Only what a stage trains has a gradient and Adam's two float32 "
        "moments (counted on the real optimiser's state, `jax.eval_shape(make_optimizer(...).init, trainable)`); "
        "the frozen LLM and towers are parameters only.",
        "",
        "Gathered weights: FSDP all-gathers each layer's weights (bf16, still split over `tensor`) just before use "
        "and XLA prefetches the next layer's, so two layers and the LM head are live.",
        "",
        "Found on the way: the trainer builds Adam's state with `jax.jit(tx.init)(trainable)`, which leaves the "
        "moments **replicated** on every device (XLA carries no sharding through `zeros_like`; checked on 8 fake "
        f"devices). The table counts them sharded like their parameters; replicated, stage a's "
        f"{first.state.trainable_count:,} trained weights cost "
        f"{_size(first.state.trainable_count * 8)} of moments on every device instead — it still fits everywhere. "
        "`jax.jit(tx.init, out_shardings=...)` with the parameters' shardings gives the counted layout.",
        "",
        "## Activations",
        "",
        f"Per row of T = {act.tokens} tokens, per device: `T · (num_layers · layer + head + layer)` — the layers' "
        f"saved set under `{act.remat}`, the head (outside the scan), and the layer being differentiated "
        "(its recomputed forward and its cotangents, about one more saved set). With "
        "`dots_with_no_batch_dims_saveable`, every `Dense` is a 2-D matmul over all tokens, so the policy keeps "
        "the projection outputs the backward needs; the down projection's output is not needed (the next layer's "
        "input is kept instead) and the attention kernel's output is recomputed (a `custom_vjp`, invisible to "
        "the policy). Bytes per token on "
        f"{first.target.name} ({first.target.mesh_text()}):",
        "",
        _md_table(["term", "bytes per token"], [[name, f"{b:,.0f}"] for name, b in act.describe()]),
        "",
        f"Total: {act.layer_bytes_per_token:,.0f} B per layer per token × {act.num_layers} layers + "
        f"{act.head_bytes_per_token:,.0f} (head) + {act.working_bytes_per_token:,.0f} (working layer) = "
        f"{act.per_token_bytes:,.0f} B per token, {_size(act.per_row_bytes)} per row. With `tensor` > 1 the q/k/v, "
        "MLP, LoRA-B (q/k/v) and logits terms divide by it; the scan carry, the o projection's output and the "
        "LoRA `A·x` do not.",
        "",
        "The frozen towers keep nothing (no gradient flows into them); their forward working set per row "
        f"({_size(first.tower_bytes_per_row)}) peaks before the LLM's backward and is compared, not added.",
        "",
    ]
    if crosscheck:
        out += [
            "### Cross-check against XLA",
            "",
            "`merg_jax/plan/crosscheck.py` compiles the real stage-a step (`make_train_step` of stage `coe`, as "
            "the trainer jits it) of scaled-down copies of the recipe — same LoRA, remat, scan, fp32 masters, "
            "CS/SD and Adam; LLM hidden 512, MLP 1376, 4 heads, vocabulary 4096, 256 tokens, no towers; float32 "
            "compute, because XLA:CPU computes bf16 matmuls in float32 and keeps float32 outputs — on 8 fake CPU "
            "devices, at (2 layers, 2 rows/device), (2, 4) and (4, 4), and reads "
            "`compiled.memory_analysis()`. The slopes of its temporary bytes give, with no constant fitted, the "
            "bytes per layer per token and per row per token; its argument bytes check the state count.",
            "",
            _md_table(["mesh", "quantity", "counted", "compiled", "difference"], crosscheck_rows(crosscheck)),
            "",
            "The per-layer slope is the layers' saved set; the per-row slope adds the head and the working layer, "
            "where XLA may do better than the count by up to one float32 logits buffer per token (4·V/tensor "
            "bytes), by writing the logits' cotangent over `exp(logits)`; it does so on some meshes and not "
            f"others. That buffer is up to {copy_logits_share(crosscheck):.0%} of the scaled copy's row (2 layers) "
            f"but {logits_share(act):.0%} of the recipe's, so the count errs on the safe side by at most that much.",
            "",
        ]
    else:
        out += ["(The compiled cross-check was skipped: `--no-crosscheck`.)", ""]
    out += [
        "## Step time",
        "",
        "FLOPs per row, stage a (`merg_jax/plan/flops.py`): the LLM's matmul weights N = "
        f"{flops.n_matmul:,} (7 projections per layer + LM head; the embedding is a gather) and LoRA "
        f"N_lora = {flops.n_lora:,}. The frozen weights still multiply the cotangent on the way down (the "
        "projections below layer 0 train), but need no weight gradient: the LLM costs 4·N·T + 6·N_lora·T, not "
        "6·N·T.",
        "",
        _md_table(["term", "FLOPs per row"], [[name, f"{v:.3e}"] for name, v in flops.describe()]
                  + [["**model FLOPs per row** (what MFU divides)", f"**{flops.model_per_row:.3e}**"],
                     ["+ attention forward recomputed by remat (hardware only)", f"{flops.attention_recompute:.3e}"]]),
        "",
        f"The frozen towers' forward is {towers_share:.0%} of stage a's FLOPs: every row runs "
        "`data.max_clips` clips through ImageBind-huge (the video as 2-frame tubelets, the audio as 3 windows), "
        "padding slots included. They are frozen, so embedding every clip once before training and reading the "
        "embeddings back would cut stage a's step time by about that share.",
        "",
        "Step time = each device's share of the model FLOPs (rows over `data × fsdp`, each row's matmuls over "
        "`tensor`) / (MFU × peak). The MFU is an assumption, taken from MaxText's published runs:",
        "",
        _md_table(["target", "peak bf16", "MFU used", "MaxText reference", "source"],
                  [[p.target.name, f"{p.target.peak_tflops:g} TFLOP/s", f"{p.mfu:.1%}", p.target.reference.what,
                    p.target.reference.source] for p in plan.targets]),
        "",
        "These are pretraining runs of larger models at 2k–4k tokens and large per-device batches. Stage a's rows "
        "are 512 tokens and, at the planned batch, one per device: expect less than these figures there (per-layer "
        "FSDP all-gathers are no longer hidden behind enough compute); at the largest batch the reference is "
        "closer. Pass `--mfu` to plan with your own figure.",
        "",
        "## Every stage's state",
        "",
        _md_table(["target", "stage", "trains", "trained params", "parameters", "Adam", "gradients"],
                  [[p.target.name, s.stage, ", ".join(s.groups), f"{s.trainable_count:,}", _size(s.params_bytes),
                    _size(s.optimizer_bytes), _size(s.gradient_bytes)] for p in plan.targets for s in p.stages]),
        "",
    ]
    return "\n".join(out)


__all__ = ["crosscheck_rows", "markdown", "table", "target_rows", "to_json"]
