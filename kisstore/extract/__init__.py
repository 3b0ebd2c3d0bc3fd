"""The extraction stage: the only part of kisstore that runs a model (needs the [extract] extra).

The package is callable: ``kisstore.extract(model, store, **options)`` is
:func:`kisstore.api.extract`, the same run as ``kisstore extract``.
"""

import sys
import types

from kisstore.extract.pipeline import ExtractOptions, run_extract

__all__ = ["ExtractOptions", "run_extract"]


class _CallableModule(types.ModuleType):
    # `import kisstore.extract` binds kisstore.extract to this package, so the API function of
    # that name is reached by calling the package itself
    def __call__(self, *args, **kwargs):
        from kisstore.api import extract

        return extract(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
