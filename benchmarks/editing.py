"""Benchmark 7: lifelong editing's update rules, sequential steps against re-solving from scratch.

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
