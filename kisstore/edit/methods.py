"""Update rules of multi-layer edits, one object per method with one interface.

A method knows its layers and, for a step's batch at the i-th of them, turns the live keys
``K`` (B, d_ff) into ``adj`` (d_ff, B): the update is ``ΔW = Rᵀ adjᵀ`` for the residual share
``R`` (B, d_model) the loop gives that layer, and any key ``k`` then moves by ``Rᵀ (adjᵀ k)``
(the prediction). ``share(i)`` is the fraction of the remaining residual layer i takes;
``after_step`` sees the batch's keys once every layer is updated (AlphaEdit's cache);
``state``/``load_state`` carry what must survive a checkpoint. Pure numpy.

* :class:`Memit` — MEMIT (Meng et al. 2023, Alg. 1): ``adj = (λC + KᵀK)⁻¹Kᵀ``, residual ÷ the
  number of layers left.
* :class:`AlphaEdit` — AlphaEdit (Fang et al., ICLR 2025): ``adj = (P(K_pK_pᵀ + KᵀK) + L2·I)⁻¹ P Kᵀ``
  with P the projector onto the null space of C's dominant directions and ``K_p`` every key
  edited in earlier steps; residual split as MEMIT's (AlphaEdit's code keeps MEMIT's loop).
"""

from __future__ import annotations

import numpy as np

from kisstore.edit import closed_form as cf


class Memit:
    """MEMIT's batched closed form at each layer of the range, with its ``mom2_update_weight`` λ."""

    name = "memit"

    def __init__(self, layers: list[int], covs: np.ndarray, mom2_weight: float):
        self.layers = list(layers)
        self.covs = np.asarray(covs, dtype=np.float64)  # (layer, d_ff, d_ff): the store's E[kkᵀ]
        self.mom2_weight = float(mom2_weight)

    def share(self, index: int) -> float:
        return 1.0 / (len(self.layers) - index)

    def adjoint(self, index: int, keys: np.ndarray) -> np.ndarray:
        return cf.memit_adjoint(keys, self.covs[index], self.mom2_weight)

    def after_step(self, index: int, keys: np.ndarray) -> None:
        pass

    def state(self) -> dict[str, np.ndarray]:
        return {}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        pass


class AlphaEdit:
    """AlphaEdit applied to the model: null-space projection, its key cache, MEMIT's residual split."""

    name = "alphaedit"

    def __init__(self, layers: list[int], covs: np.ndarray, threshold: float, l2: float, relative: bool = False):
        self.layers = list(layers)
        self.l2 = float(l2)
        pairs = [cf.nullspace_projector(c, threshold, relative=relative) for c in np.asarray(covs, dtype=np.float64)]
        self.projectors = np.stack([p for p, _ in pairs])
        self.ranks = [r for _, r in pairs]
        d = self.projectors.shape[-1]
        self.cache = np.zeros((len(self.layers), d, d))  # K_p K_pᵀ per layer, grown after each step

    def share(self, index: int) -> float:
        return 1.0 / (len(self.layers) - index)

    def adjoint(self, index: int, keys: np.ndarray) -> np.ndarray:
        return cf.alphaedit_adjoint(keys, self.cache[index], self.projectors[index], self.l2)

    def after_step(self, index: int, keys: np.ndarray) -> None:
        k = np.asarray(keys, dtype=np.float64)
        self.cache[index] += k.T @ k  # AlphaEdit: cache_c += K Kᵀ with the keys after the edit

    def state(self) -> dict[str, np.ndarray]:
        return {"alphaedit_cache": self.cache}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        self.cache = np.array(state["alphaedit_cache"], dtype=np.float64)
