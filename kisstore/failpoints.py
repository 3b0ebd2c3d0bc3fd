"""Named points where a test can make the process die for real (crash-safety tests).

``KISSTORE_FAILPOINT=name[:n]`` sends SIGKILL to this process the n-th time (default 1st)
execution reaches ``hit(name)``. Unset, ``hit`` costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

_counts: dict[str, int] = {}


def hit(name: str) -> None:
    spec = os.environ.get("KISSTORE_FAILPOINT")
    if not spec:
        return
    target, _, nth = spec.partition(":")
    if target != name:
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
