"""Labels on the item dimensions of an analysis: each fact's text and its position.

With these coordinates a per-fact query needs no join with ``/items``
(``an["p_matrix"].sel(layer=0).where(an["relation_id"] == an["relation_id_"])``), and
``position``/``position_`` (0…N−1, the store's order) give ``.plot()`` a sorted axis:
CounterFact case ids are not sorted, so ``p.plot()`` on them raises, while
``p.plot(x="position_", y="position")`` draws the matrix in the store's order.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from kisstore.analysis import lift
from kisstore.store import layout

# /items field → long name of the coordinate on `item` (and, with a trailing "_", on `item_`)
LABELS = {
    "subject": "subject of the fact",
    "relation_id": "relation of the fact (CounterFact relation_id, e.g. P27)",
    "target_true": "true target (object) of the fact",
}
POSITION = "position"


def item_labels(items_ds: xr.Dataset, case_ids: np.ndarray) -> dict[str, tuple]:
    """The label coordinates for the items ``case_ids`` (in that order): ``subject``,
    ``relation_id``, ``target_true`` on ``item``, the same with ``_`` on ``item_``, and
    ``position``/``position_``. Fields the store's /items lacks are left out."""
    text = items_ds.sel(item=case_ids)
    coords: dict[str, tuple] = {}
    for field, desc in LABELS.items():
        if field not in text:
            continue
        values = np.array([str(v) for v in text[field].values], dtype=object)
        # a copy of /items text: no numeric twin (core-Zarr readers join `item` with /items/text_utf8)
        coords[field] = (lift.ITEM, values, {"long_name": desc, layout.FROM_ITEMS: field})
        coords[f"{field}_"] = (lift.ITEM_, values, {"long_name": f"{desc}; column (disturbed) fact",
                                                    layout.FROM_ITEMS: field})
    pos = np.arange(case_ids.size, dtype=np.int64)
    coords[POSITION] = (lift.ITEM, pos, {"long_name": "position of the fact in the analysis (0 = first)"})
    coords[f"{POSITION}_"] = (lift.ITEM_, pos,
                              {"long_name": "position of the column (disturbed) fact in the analysis"})
    return coords


def assign_labels(ds: xr.Dataset, items_ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with the label coordinates of its ``item`` dimension (see ``item_labels``)."""
    case_ids = np.asarray(ds[lift.ITEM].values)
    coords = item_labels(items_ds, case_ids)
    return ds.assign_coords({k: v for k, v in coords.items() if v[0] in ds.dims})
