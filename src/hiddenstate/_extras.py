"""Optional dependencies: import one, or fail in one line that names the extra to install.

The core (state, model, Stateful, train, runs) needs torch, numpy and safetensors only. Everything
else is an extra::

    data   pandas, pyarrow              cli    typer, rich, matplotlib (+ data)
    serve  fastapi, uvicorn, pydantic,  keras  h5py (reading files), keras (live models, saving)
           redis, httpx, prometheus     onnx   onnx, onnxscript, onnxruntime

>>> require("json", "data").__name__
'json'
>>> require("no_such_module_here", "serve")
Traceback (most recent call last):
...
hiddenstate.errors.MissingExtraError: no_such_module_here is not installed: pip install 'hiddenstate[serve]'
"""

from __future__ import annotations

import importlib
from types import ModuleType

from hiddenstate.errors import MissingExtraError

__all__ = ["EXTRAS", "require"]

#: The extras and what each one brings, as pyproject.toml declares them.
EXTRAS = ("data", "cli", "serve", "keras", "onnx", "all")


def require(module: str, extra: str) -> ModuleType:
    """Import ``module``, or raise :class:`MissingExtraError` naming ``pip install 'hiddenstate[extra]'``."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is not None and module.split(".")[0] != e.name.split(".")[0]:
            raise  # the module is there but one of its own dependencies is broken: show that
        raise MissingExtraError(module.split(".")[0], extra) from None
