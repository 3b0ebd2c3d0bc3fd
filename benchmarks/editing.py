"""Benchmark 7: lifelong editing's update rules, sequential steps against re-solving from scratch,
on the algebra alone (:func:`run`) and MEMIT on the model (:func:`run_model`).

``kisstore edit --method memit|alphaedit`` makes one closed-form update per layer and step: a
d_ff × d_ff solve whose size does not grow with the number of edits made (MEMIT: ``λC + KᵀK``
of the step's batch only; AlphaEdit: its key cache ``K_pK_pᵀ`` is a running d_ff × d_ff sum).
Re-solving from scratch — one batched update for every edit made so far, from the unedited
weights, as a one-shot MEMIT/AlphaEdit batch would — costs a Gram product over all of them on
top of the same solve. This benchmark times both side by side on SmolLM2-135M's shapes
(d_ff 1536, d_model 576) over 6 layers, batches of 10 edits, 8 steps, interleaved step by step, and
checks that both give finite updates. Synthetic keys with a spectrum spanning three decades
(like SmolLM2's C) stand in for the model's: the cost of the algebra does not depend on their
values. The model's own work per step (the target optimisation, the live forward, the scoring)
is measured by the edit runs themselves (``seconds`` in ``/edits/<run>``, docs/editing.md).
"""

from __future__ import annotations

import time

import numpy as np

from benchmarks.common import Result, median


def _problem(rng, d_ff: int, n_keys: int):
    q = np.linalg.qr(rng.normal(size=(d_ff, d_ff)))[0]
    evals = np.logspace(0, -3, d_ff)
    cov = (q * evals) @ q.T
    keys = (rng.normal(size=(n_keys, d_ff)) * np.sqrt(evals)) @ q.T * 3.0
    return cov, keys


def run(d_ff: int = 1536, d_model: int = 576, n_layers: int = 6, batch: int = 10, steps: int = 8,
        progress=lambda _msg: None) -> list[Result]:
    from kisstore.edit import closed_form as cf
    from kisstore.edit.methods import AlphaEdit, Memit

    rng = np.random.default_rng(0)
    cov, keys = _problem(rng, d_ff, batch * steps)
    resid = rng.normal(size=(batch * steps, d_model))
    covs = np.stack([cov] * n_layers)
    memit = Memit(list(range(n_layers)), covs, 15000.0)
    alpha = AlphaEdit(list(range(n_layers)), covs, threshold=2e-2, l2=10.0, relative=True)
    t_inc = {"memit": [], "alphaedit": []}
    t_all = {"memit": [], "alphaedit": []}
    for s in range(steps):
        rows = slice(s * batch, (s + 1) * batch)
        upto = slice(0, (s + 1) * batch)
        for name in ("memit", "alphaedit"):
            t = time.perf_counter()  # one step: every layer's update for this batch only
            for li in range(n_layers):
                m = memit if name == "memit" else alpha
                adj = m.adjoint(li, keys[rows])
                delta = resid[rows].T @ adj.T
                m.after_step(li, keys[rows])
            t_inc[name].append(time.perf_counter() - t)
            assert np.isfinite(delta).all()
            t = time.perf_counter()  # from scratch: one batched update over every edit so far
            for li in range(n_layers):
                if name == "memit":
                    adj = cf.memit_adjoint(keys[upto], cov, 15000.0)
                else:
                    adj = cf.alphaedit_adjoint(keys[upto], np.zeros((d_ff, d_ff)), alpha.projectors[li], 10.0)
                delta = resid[upto].T @ adj.T
            t_all[name].append(time.perf_counter() - t)
            assert np.isfinite(delta).all()
        if (s + 1) % 2 == 0:
            progress(f"benchmark 7: step {s + 1}/{steps} ({(s + 1) * batch} edits)")
    out = []
    late = slice(steps // 2, steps)  # once the edits so far outnumber a batch many times
    for name, label in (("memit", "MEMIT"), ("alphaedit", "AlphaEdit")):
        inc, full = np.array(t_inc[name]), np.array(t_all[name])
        ratio = median(list(full[late] / inc[late]))
        out.append(Result(
            key=f"edit_{name}_edits_per_s", title=f"{label} update rule: edits per second ({n_layers} layers, "
            f"batches of {batch})", value=float(batch / median(list(inc))), target=None, unit=" edits/s",
            details={"seconds_per_step_median": median(list(inc)), "d_ff": d_ff, "d_model": d_model,
                     "layers": n_layers, "batch": batch, "steps": steps}))
        out.append(Result(
            key=f"edit_{name}_scratch_ratio", title=f"{label}: re-solving all edits so far / one sequential step "
            f"(steps {steps // 2 + 1}–{steps})", value=ratio, target=None,
            details={"scratch_seconds_last": float(full[-1]), "step_seconds_last": float(inc[-1]),
                     "edits_at_last_step": batch * steps,
                     "replay_from_scratch_at_last_step": f"{steps} steps = {steps}× one step, by construction"}))
    return out


def run_model(lm, layers: list[int] | None = None, batch: int = 10, steps: int = 6, lam: float = 15000.0,
              progress=lambda _msg: None) -> list[Result]:
    """MEMIT on the loaded model (the embedded SmolLM2-135M or its random stand-in): edits per
    second of the update as ``kisstore edit --method memit`` applies it, and one sequential step
    against re-solving every edit so far at once from the unedited weights, interleaved step by
    step in one run.

    A step here is MEMIT's work on the live model: for the batch, the forward that reads the
    last layer's hidden state, then per layer of the range the forward that reads the batch's
    keys (after the updates below), the solve and the weight write. The re-solve does the same
    for all ``s·batch`` edits so far from ``W₀`` (a one-shot MEMIT batch). The targets are
    fixed per fact beforehand (``direct``'s δ on the unedited model), so neither side pays for
    a target optimisation; with ROME's (the same per fact on both sides) the re-solve would also
    redo ``s·batch`` optimisations against ``batch``. The covariance of each layer is that of the
    facts' own keys plus a ridge (the cost does not depend on its values); kisstore's per-step
    measurement forwards (predicted, measured, live, scoring) are not included — a real run's
    step seconds are in ``/edits/<run>``.
    """
    import torch

    from kisstore.data.items import load_items
    from kisstore.edit.evaluate import FactProbe, capture_at_keys
    from kisstore.edit.methods import Memit
    from kisstore.edit.targets import direct_delta
    from kisstore.edit.weights import down_proj_weight, set_down_proj_weight

    if layers is None:
        mid = lm.n_layers // 4
        layers = list(range(mid, min(mid + 6, lm.n_layers)))
    items = load_items(None).items
    seen, chosen = set(), []
    for it in items:  # distinct subjects, as `kisstore edit` draws them
        if it.subject.casefold() not in seen:
            seen.add(it.subject.casefold())
            chosen.append(it)
    n = min(batch * steps, len(chosen))
    steps = n // batch
    chosen = chosen[: steps * batch]
    modules = [lm.key_site.find(lm.model, lay) for lay in layers]
    block = lm.key_site.find(lm.model, layers[-1], block=True)
    probe = FactProbe(lm, chosen)
    originals = [m.weight.detach().clone() for m in modules]
    w0 = [down_proj_weight(m) for m in modules]
    try:
        keys, (values, _h) = capture_at_keys(probe, inputs=modules, outputs=[modules[-1], block])
        covs = np.stack([k.T @ k / len(chosen) + 1e-2 * np.mean(np.sum(k * k, axis=1)) / k.shape[1]
                         * np.eye(k.shape[1]) for k in keys])
        deltas = np.stack([direct_delta(lm, it, values[i]).delta for i, it in enumerate(chosen)])

        def memit_step(method, weights, rows) -> None:
            (h,) = capture_at_keys(probe, outputs=[block], indices=rows)[1]
            z = h + deltas[rows]
            for idx in range(len(layers)):
                (k_l,), (h_l,) = capture_at_keys(probe, inputs=[modules[idx]], outputs=[block], indices=rows)
                adj = method.adjoint(idx, k_l)
                weights[idx] = weights[idx] + ((z - h_l) * method.share(idx)).T @ adj.T
                set_down_proj_weight(modules[idx], weights[idx])

        sequential = [w.copy() for w in w0]
        method = Memit(layers, covs, lam)
        t_inc, t_all = [], []
        with torch.no_grad():
            for s in range(steps):
                for idx, m in enumerate(modules):
                    set_down_proj_weight(m, sequential[idx])
                t = time.perf_counter()  # one sequential step: this batch only, on the edited weights
                memit_step(method, sequential, list(range(s * batch, (s + 1) * batch)))
                t_inc.append(time.perf_counter() - t)
                scratch = [w.copy() for w in w0]
                for idx, m in enumerate(modules):
                    set_down_proj_weight(m, scratch[idx])
                t = time.perf_counter()  # from scratch: every edit so far, one batch, from W₀
                memit_step(Memit(layers, covs, lam), scratch, list(range((s + 1) * batch)))
                t_all.append(time.perf_counter() - t)
                assert all(np.isfinite(w).all() for w in (*sequential, *scratch))
                if s == 0:  # one batch: the same update both ways (a check of the two paths)
                    first_diff = max(float(np.max(np.abs(a - b))) for a, b in zip(sequential, scratch, strict=True))
                progress(f"benchmark 7: MEMIT on the model, step {s + 1}/{steps}: {t_inc[-1]:.2f} s, "
                         f"re-solving {(s + 1) * batch} edits {t_all[-1]:.2f} s")
    finally:
        with torch.no_grad():
            for m, o in zip(modules, originals, strict=True):
                m.weight.copy_(o)
    inc, full = np.array(t_inc), np.array(t_all)
    late = slice(steps // 2, steps)
    details = {"layers": layers, "batch": batch, "steps": steps, "edits": steps * batch,
               "seconds_per_step_median": median(list(inc)), "scratch_seconds_last": float(full[-1]),
               "step_seconds_last": float(inc[-1]), "mom2_update_weight": lam,
               "first_step_max_abs_difference": first_diff}
    span = f"layers {layers[0]}–{layers[-1]}, batches of {batch}"
    return [
        Result(key="edit_memit_model_edits_per_s", title=f"MEMIT on the model: edits per second ({span})",
               value=float(batch / median(list(inc))), target=None, unit=" edits/s", details=details),
        Result(key="edit_memit_model_scratch_ratio", title=f"MEMIT on the model: re-solving all edits so far / one "
               f"sequential step (steps {steps // 2 + 1}–{steps})", value=median(list(full[late] / inc[late])),
               target=None, details=details),
    ]
