"""Sequential closed-form knowledge edits and the interference they cause (``kisstore edit``).

Pure numerics live in :mod:`kisstore.edit.closed_form`; the model side (weights, targets,
behaviour) in ``weights``, ``targets`` and ``evaluate``; ``run`` ties them to a store and
``report`` draws the figures; ``methods`` holds MEMIT's and AlphaEdit's update rules and ``spread``
their batched, multi-layer, checkpointed loop. Importing this package does not import torch.
"""

from kisstore.edit.closed_form import (
    AlphaEditSequence,
    RankOneEdit,
    alphaedit_adjoint,
    coefficients,
    cov_solve,
    memit_adjoint,
    nullspace_projector,
    predicted_changes,
    rank_one_edit,
    relative_error,
    whitened_keys,
)
from kisstore.edit.methods import AlphaEdit, Memit
from kisstore.edit.run import EditOptions, plan_edit, run_edit
from kisstore.edit.targets import RomeOptions

__all__ = [
    "AlphaEdit", "AlphaEditSequence", "Memit", "alphaedit_adjoint", "memit_adjoint", "EditOptions", "RankOneEdit", "RomeOptions", "coefficients", "cov_solve", "nullspace_projector",
    "plan_edit", "predicted_changes", "rank_one_edit", "relative_error", "run_edit", "whitened_keys",
]
