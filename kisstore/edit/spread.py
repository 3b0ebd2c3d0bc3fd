"""Edits spread over a layer range (MEMIT, AlphaEdit applied), in batches, checkpointed and resumable.

One step edits a batch of B facts (MEMIT, Meng et al. 2023, Alg. 1):

1. the target hidden state ``z_i = h_i^L + δ_i`` at the last layer L of the range, with δ from
   ROME's optimisation (or ``direct``) at L's down-projection output (adding δ there adds it to
   the residual stream at L, where MEMIT adds it);
2. for each layer l of the range in order: the live keys ``K_l`` of the batch (recomputed after
   the lower layers' updates, as MEMIT does), the live ``h^L``, the residual share
   ``R = (z − h^L) · share(l)`` and the method's update ``ΔW_l = Rᵀ adjᵀ``, written into the model;
3. one forward over every fact reads each layer's down-projection output (the **live** change)
   and keys; the method sees the batch's new keys (AlphaEdit's cache).

The theory side predicts each layer's change of every stored key from ``adj`` and ``R`` alone
(``Rᵀ adjᵀ k``), the algebra side applies the float64 weights to the stored keys
(**measured**), and the live forward gives the model's own change. At the first layer of the
range the three agree (float32 rounding); above it the live keys have moved (the edits below
change them), which the stored-key prediction does not include: ``key_drift`` says by how much.

Every ``checkpoint_every`` steps the whole state (float64 weights, cumulative predictions, the
method's cache, every array recorded so far) is written to
``/_staging/edit-checkpoints/<run>/s<step>`` (never visible to readers; kisstore.edit.checkpoint,
shared with ROME/direct runs); the same command again resumes from the newest complete
checkpoint and produces the same arrays, bit for bit.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import xarray as xr

from kisstore import failpoints
from kisstore.edit import closed_form as cf
from kisstore.edit.checkpoint import (
    evaluator_arrays,
    latest_checkpoint,
    load_evaluator,
    write_checkpoint,
)
from kisstore.store.io import Store

SPREAD_METHODS = ("memit", "alphaedit")

# recorded arrays: name → dims (step first); filled step by step, checkpointed whole
RECORD = {
    "predicted_norm": ("step", "layer", "item"), "measured_norm": ("step", "layer", "item"),
    "live_norm": ("step", "layer", "item"), "relative_error": ("step", "layer", "item"),
    "live_relative_error": ("step", "layer", "item"), "interference_predicted": ("step", "layer", "item"),
    "interference_measured": ("step", "layer", "item"), "interference_live": ("step", "layer", "item"),
    "key_drift": ("step", "layer", "item"),
    "walk_increment": ("step", "layer", "item"), "coefficient_ms": ("step", "layer", "item"),
    "update_norm": ("step", "layer"), "residual_norm": ("step", "layer"),
    "step_relative_error": ("step", "layer"), "step_live_relative_error": ("step", "layer"),
    "target_residual_norm": ("step", "item"), "target_remaining_norm": ("step", "item"),
    "p_true": ("step", "item"), "p_new": ("step", "item"), "top1": ("step", "item"),
    "efficacy": ("step",), "efficacy_success": ("step",), "seconds": ("step",),
    "optimisation_steps": ("item",), "optimisation_nll": ("item",), "optimisation_nll_start": ("item",),
}
ATTRS = {
    "predicted_norm": ("|predicted change| of each stored key's value at the layer", None),
    "measured_norm": ("|W_n k - W_0 k| with the float64 weights and the stored keys", None),
    "live_norm": ("|change| of the live down-projection output at the key", None),
    "relative_error": ("|predicted - measured| / |measured|", "1"),
    "live_relative_error": ("|predicted - live| / |live|", "1"),
    "interference_predicted": ("|unintended change|, predicted (an edited fact: since its own step)", None),
    "interference_measured": ("|unintended change|, measured on the weights", None),
    "interference_live": ("|unintended change| in the live model", None),
    "key_drift": ("|live key - stored key| (keys move when lower layers are edited)", None),
    "update_norm": ("|ΔW| (Frobenius) of the step at the layer", None),
    "residual_norm": ("|R| (Frobenius) of the residual share given to the layer", None),
    "walk_increment": ("Σ_b c_b² |R_b|² of the step, c = adjᵀk the key's coefficients on the batch's residuals",
                       None),
    "coefficient_ms": ("mean over the batch of c_b², the key's squared coefficients (P statistics)", "1"),
    "step_relative_error": ("predicted vs measured over all facts of the step", "1"),
    "step_live_relative_error": ("predicted vs live over all facts of the step", "1"),
    "target_residual_norm": ("|z - h^L| of the step's facts before the step", None),
    "target_remaining_norm": ("|z - h^L| of the step's facts after the step", None),
    "p_true": ("p(target_true), whole target", "1"), "p_new": ("p(target_new), whole target", "1"),
    "top1": ("greedy decoding reproduces target_true", None),
    "efficacy": ("mean p(target_new) of the step's facts after the step", "1"),
    "efficacy_success": ("share of the step's facts with p_new > p_true after it", "1"),
    "seconds": ("wall time of the step", "s"),
    "optimisation_steps": ("Adam updates of the fact's rome target", None),
    "optimisation_nll": ("NLL of target_new with the optimised δ", None),
    "optimisation_nll_start": ("NLL of target_new with δ = 0", None),
}


def batches(n_edits: int, size: int) -> list[list[int]]:
    """The edited facts (0…n_edits−1, in edit order) in consecutive batches of ``size``."""
    return [list(range(s, min(s + size, n_edits))) for s in range(0, n_edits, size)]


def make_method(opts, plan):
    from kisstore.analysis.geometry import regularize
    from kisstore.edit.methods import AlphaEdit, Memit

    covs = np.stack([regularize(c, opts.ridge) for c in plan.layer_covs])
    if opts.method == "memit":
        return Memit(plan.layers, covs, opts.mom2_update_weight)
    return AlphaEdit(plan.layers, covs, opts.nullspace_threshold, opts.alphaedit_l2, relative=opts.nullspace_relative)


def _norm(x: np.ndarray) -> np.ndarray:
    return np.sqrt(np.sum(x * x, axis=-1))


# -- the loop ------------------------------------------------------------------------------------
def spread_edits(lm, plan, opts, say: Callable[[str], None], store: Store, settings: dict[str, Any],
                 prompts=None) -> xr.Dataset:
    """Run the plan's edits in batches over its layer range; checkpoint every few steps; resume.

    With ``opts.eval_every``, CounterFact's evaluation (``prompts``) runs at step 0 and every
    ``eval_every`` steps; the forecast is added from the recorded arrays at the end."""
    import torch

    from kisstore.edit.evaluate import FactProbe, capture_at_keys
    from kisstore.edit.run import check_same_model
    from kisstore.edit.targets import direct_delta, rome_delta
    from kisstore.edit.weights import down_proj_weight, set_down_proj_weight

    layers = plan.layers
    n_l, n_e, n = len(layers), plan.n_edits, len(plan.items)
    modules = [lm.key_site.find(lm.model, lay) for lay in layers]
    block = lm.key_site.find(lm.model, layers[-1], block=True)
    keys = plan.layer_keys  # (layer, item, d_ff): the stored keys of the unedited model
    groups = batches(n_e, opts.batch)
    steps = len(groups) + 1
    edit_step = np.full(n, -1, dtype=np.int64)
    for j, b in enumerate(groups, start=1):
        edit_step[b] = j
    method = make_method(opts, plan)
    w0 = [down_proj_weight(m) for m in modules]
    d_model = w0[0].shape[0]
    position = plan.attrs.get("token_position") or "subject_last"
    probe = FactProbe(lm, plan.items, batch_tokens=opts.batch_tokens, position=position)
    originals = [m.weight.detach().clone() for m in modules]
    tracked_rows = list(range(n_e, n))

    shapes = {"step": steps, "layer": n_l, "item": n}
    rec: dict[str, np.ndarray] = {}
    for name, dims in RECORD.items():
        shape = tuple(shapes[d] for d in dims)
        if name == "top1":
            rec[name] = np.zeros(shape, dtype=bool)
        elif name == "optimisation_steps":
            rec[name] = np.zeros(shape, dtype=np.int64)
        else:
            rec[name] = np.full(shape, np.nan)
    for name in ("predicted_norm", "measured_norm", "live_norm", "relative_error", "live_relative_error",
                 "interference_predicted", "interference_measured", "interference_live", "key_drift",
                 "step_relative_error", "step_live_relative_error", "walk_increment", "coefficient_ms"):
        rec[name][0] = 0.0
    rec["seconds"][0] = 0.0
    weights = np.stack(w0)  # (layer, d_model, d_ff) float64 master copies
    predicted = np.zeros((n_l, n, d_model))  # cumulative Σ Rᵀ adjᵀ k per layer (theory side)
    at_edit = {k: np.zeros((n_l, n, d_model)) for k in ("predicted", "measured", "live")}
    start = 1
    counterfact = None
    if opts.eval_every:
        from kisstore.edit.evaluate import CounterFactEvaluator
        from kisstore.edit.metrics import PromptSource, eval_steps

        counterfact = CounterFactEvaluator(lm, plan.items[:n_e], prompts or PromptSource(),
                                           eval_steps(steps - 1, opts.eval_every), batch_tokens=opts.batch_tokens)

    def done_by(step: int) -> int:
        return sum(len(b) for b in groups[:step])  # facts edited at steps ≤ step

    def score(step: int) -> None:
        upto = list(range(min(sum(len(b) for b in groups[:step + 1]), n_e)))  # edited so far + next batch
        s = probe.score(tracked_rows + upto, new_for=upto)
        rec["p_true"][step], rec["p_new"][step], rec["top1"][step] = s.p_true, s.p_new, s.top1

    def state_arrays() -> dict[str, tuple[tuple[str, ...], np.ndarray]]:
        out = {name: (RECORD[name], rec[name]) for name in RECORD}
        out["state_weights"] = (("layer", "d_model", "d_ff"), weights)
        out["state_predicted"] = (("layer", "item", "d_model"), predicted)
        for k, v in at_edit.items():
            out[f"state_at_edit_{k}"] = (("layer", "item", "d_model"), v)
        for k, v in method.state().items():
            out[f"state_{k}"] = (("layer", "d_ff", "d_ff_"), v)
        out.update(evaluator_arrays(counterfact))
        return out

    try:
        _, live_base = capture_at_keys(probe, outputs=modules)  # the unedited model, every layer
        check_same_model(plan, np.stack([keys[i] @ w0[i].T for i in range(n_l)]), np.stack(live_base))
        resumed = None if opts.overwrite else latest_checkpoint(store, plan.run, settings)
        if resumed is not None:
            start = int(resumed.attrs["step"]) + 1
            for name in RECORD:
                rec[name] = np.array(resumed[name].values, dtype=rec[name].dtype)
            weights = np.array(resumed["state_weights"].values, dtype=np.float64)
            predicted = np.array(resumed["state_predicted"].values, dtype=np.float64)
            for k in at_edit:
                at_edit[k] = np.array(resumed[f"state_at_edit_{k}"].values, dtype=np.float64)
            method.load_state({k[len("state_"):]: resumed[k].values for k in resumed.data_vars
                               if k.startswith("state_") and k not in
                               ("state_weights", "state_predicted", *(f"state_at_edit_{a}" for a in at_edit))})
            load_evaluator(counterfact, resumed)
            for i, m in enumerate(modules):
                set_down_proj_weight(m, weights[i])
            say(f"[{plan.model_id}] resuming /edits/{plan.run} after step {start - 1}/{steps - 1} "
                "from its checkpoint")
        else:
            score(0)
            if counterfact is not None:
                counterfact.evaluate(0)
        for j in range(start, steps):
            t = time.perf_counter()
            b = groups[j - 1]
            (k_last,), (v_last, h_last) = capture_at_keys(probe, inputs=[modules[-1]], outputs=[modules[-1], block],
                                                          indices=b)
            deltas = np.zeros((len(b), d_model))
            for r, i in enumerate(b):
                item = plan.items[i]
                if opts.target == "rome":
                    res = rome_delta(lm, modules[-1], item, v_last[r], opts.rome, position=position)
                else:
                    res = direct_delta(lm, item, v_last[r], opts.direct_scale)
                deltas[r] = res.delta
                rec["optimisation_steps"][i] = res.steps
                rec["optimisation_nll"][i], rec["optimisation_nll_start"][i] = res.nll, res.nll_start
            z = h_last + deltas  # MEMIT's target hidden state at the last layer of the range
            for idx in range(n_l):
                if n_l == 1:  # the target's forward already read this layer's keys and h^L
                    k_l, h = k_last, h_last
                else:
                    (k_l,), (h,) = capture_at_keys(probe, inputs=[modules[idx]], outputs=[block], indices=b)
                if idx == 0:
                    rec["target_residual_norm"][j, b] = _norm(z - h)
                resid = (z - h) * method.share(idx)
                adj = method.adjoint(idx, k_l)  # (d_ff, B): ΔW = Rᵀ adjᵀ
                delta = resid.T @ adj.T
                weights[idx] = weights[idx] + delta
                set_down_proj_weight(modules[idx], weights[idx])
                coeff = keys[idx] @ adj  # (item, B): each stored key's coefficients on the batch's residuals
                predicted[idx] += coeff @ resid  # theory: adj, R and the stored keys only
                rec["walk_increment"][j, idx] = (coeff**2) @ np.sum(resid * resid, axis=1)
                rec["coefficient_ms"][j, idx] = np.mean(coeff**2, axis=1)
                rec["update_norm"][j, idx] = float(np.linalg.norm(delta))
                rec["residual_norm"][j, idx] = float(np.linalg.norm(resid))
            ins, outs = capture_at_keys(probe, inputs=modules, outputs=[*modules, block])
            for idx in range(n_l):
                method.after_step(idx, ins[idx][b])  # AlphaEdit's cache: the batch's keys after the step
            rec["target_remaining_norm"][j, b] = _norm(z - outs[-1][b])
            for idx in range(n_l):
                change = {"predicted": predicted[idx], "measured": keys[idx] @ (weights[idx] - w0[idx]).T,
                          "live": outs[idx] - live_base[idx]}
                for k, v in change.items():
                    at_edit[k][idx, b] = v[b]
                    rec[f"interference_{k}"][j, idx] = _norm(v - at_edit[k][idx])
                rec["predicted_norm"][j, idx] = _norm(change["predicted"])
                rec["measured_norm"][j, idx] = _norm(change["measured"])
                rec["live_norm"][j, idx] = _norm(change["live"])
                rec["relative_error"][j, idx] = cf.relative_error(change["predicted"], change["measured"], axis=-1)
                rec["live_relative_error"][j, idx] = cf.relative_error(change["predicted"], change["live"], axis=-1)
                rec["step_relative_error"][j, idx] = cf.relative_error(change["predicted"], change["measured"])
                rec["step_live_relative_error"][j, idx] = cf.relative_error(change["predicted"], change["live"])
                rec["key_drift"][j, idx] = _norm(ins[idx] - keys[idx])
            score(j)
            rec["efficacy"][j] = float(np.mean(rec["p_new"][j, b]))
            rec["efficacy_success"][j] = float(np.mean(rec["p_new"][j, b] > rec["p_true"][j, b]))
            rec["seconds"][j] = time.perf_counter() - t
            if counterfact is not None and counterfact.due(j):
                counterfact.evaluate(j, done_by(j))  # CounterFact's metrics (not counted in the step's seconds)
            tracked = slice(n_e, n)
            say(f"[step {j}/{steps - 1}] {len(b)} facts: efficacy {rec['efficacy'][j]:.3g}, "
                f"tracked p_true {np.nanmean(rec['p_true'][j, tracked]):.3g}, top-1 "
                f"{np.mean(rec['top1'][j, tracked]):.0%}, predicted vs live at layer {layers[0]} "
                f"{rec['step_live_relative_error'][j, 0]:.1e} ({rec['seconds'][j]:.1f} s)")
            if j % opts.checkpoint_every == 0 and j < steps - 1:
                write_checkpoint(store, plan.run, j, state_arrays(), settings)
            failpoints.hit("edit-step")  # crash-safety tests: a SIGKILL between two steps
    finally:
        with torch.no_grad():
            for m, o in zip(modules, originals, strict=True):
                m.weight.copy_(o)  # the caller's model is left as it was loaded
    ranks = getattr(method, "ranks", None)
    from kisstore.edit.run import add_evaluation

    ds = build_spread_dataset(plan, rec, edit_step, ranks)
    value_norm = np.stack([_norm(keys[i] @ w0[i].T) for i in range(n_l)])  # (layer, item): |W⁰_l k|
    return add_evaluation(ds, counterfact, value_norm, opts.collapse_threshold)


def build_spread_dataset(plan, rec: dict[str, np.ndarray], edit_step: np.ndarray, ranks) -> xr.Dataset:
    """Lay the recorded arrays out on (step, layer, item) with the facts' text as coordinates."""
    steps = rec["seconds"].shape[0]
    data = {}
    for name, dims in RECORD.items():
        long_name, units = ATTRS[name]
        attrs = {"long_name": long_name, **({"units": units} if units else {})}
        data[name] = xr.Variable(dims, rec[name], attrs=attrs)
    from kisstore.edit.run import item_coords

    coords = {"step": np.arange(steps), "layer": np.array(plan.layers, dtype=np.int64),
              **item_coords(plan, edit_step)}
    ds = xr.Dataset(data, coords=coords)
    by_layer = np.nanmax(rec["step_live_relative_error"][1:], axis=0) if steps > 1 else np.zeros(len(plan.layers))
    ds.attrs.update({
        "max_relative_error": float(np.nanmax(rec["step_relative_error"][1:])) if steps > 1 else 0.0,
        "max_live_relative_error": float(by_layer[0]),  # the first layer: its keys do not move
        "max_live_relative_error_by_layer": [float(x) for x in by_layer],
        "nullspace_rank": [int(r) for r in ranks] if ranks is not None else [],
    })
    return ds
