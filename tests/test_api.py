"""The public surface: an explicit ``__all__`` whose every name resolves, and runnable docstrings."""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import pkgutil
import re
import types

import pytest

import hiddenstate as hs

CORE_MODULES = ("hiddenstate", "hiddenstate.errors", "hiddenstate.state", "hiddenstate.model", "hiddenstate.stateful")


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a missing parent package
        return False


LAZY_MODULES = sorted(set(hs._LAZY.values()))
MISSING_LAZY = [m for m in LAZY_MODULES if not _module_exists(m)]


def _all_modules() -> list[str]:
    """Every module of the installed package, core first."""
    # __main__ modules run a program when imported; they are not libraries to doctest.
    found = [
        m.name for m in pkgutil.walk_packages(hs.__path__, prefix="hiddenstate.") if not m.name.endswith(".__main__")
    ]
    return [*CORE_MODULES, *sorted(set(found) - set(CORE_MODULES))]


def test_all_is_explicit_and_unique() -> None:
    assert isinstance(hs.__all__, list)
    assert all(isinstance(name, str) for name in hs.__all__)
    assert len(hs.__all__) == len(set(hs.__all__))
    # The names the issue asks for by name.
    for name in (
        "StateSpec",
        "LayerState",
        "State",
        "StackedRNN",
        "LSTM",
        "GRU",
        "RNN",
        "StateEncoder",
        "LearnedInitialState",
        "SequenceModel",
        "Stateful",
        "StateError",
    ):
        assert name in hs.__all__, name
    assert set(hs._LAZY) <= set(hs.__all__)


def test_core_names_resolve() -> None:
    core = [name for name in hs.__all__ if name not in hs._LAZY]
    for name in core:
        assert getattr(hs, name) is not None, name
    # Top-level names are the very objects of their modules.
    from hiddenstate import errors, model, state, stateful

    assert hs.State is state.State and hs.StateSpec is state.StateSpec and hs.LayerState is state.LayerState
    assert (
        hs.StackedRNN is model.StackedRNN and hs.Stateful is stateful.Stateful and hs.build_model is model.build_model
    )
    assert hs.StateError is errors.StateError
    assert issubclass(hs.StateError, ValueError) and issubclass(hs.StateError, hs.HiddenStateError)
    assert re.fullmatch(r"\d+\.\d+\.\d+([.-]?\w+)?", hs.__version__)


def test_every_public_top_level_name_is_in_all() -> None:
    public = {
        name
        for name, value in vars(hs).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType) and name != "annotations"
    }
    assert public <= set(hs.__all__), sorted(public - set(hs.__all__))


@pytest.mark.parametrize("module_name", ["hiddenstate.errors", "hiddenstate.state", "hiddenstate.model"])
def test_core_module_all_resolves(module_name: str) -> None:
    module = importlib.import_module(module_name)
    assert len(module.__all__) == len(set(module.__all__))
    for name in module.__all__:
        assert hasattr(module, name), f"{module_name}.{name}"


def test_unknown_attribute() -> None:
    with pytest.raises(AttributeError, match=r"^module 'hiddenstate' has no attribute 'nope'$"):
        hs.nope  # noqa: B018
    assert set(hs._LAZY) <= set(dir(hs))


def _submodule_names() -> set[str]:
    return {m.name for m in pkgutil.iter_modules(hs.__path__)}


@pytest.mark.skipif(bool(MISSING_LAZY), reason=f"lazy modules not written yet: {', '.join(MISSING_LAZY)}")
def test_every_name_in_all_resolves() -> None:
    for name in hs.__all__:
        value = getattr(hs, name)
        assert value is not None, name
        if name in hs._LAZY and name not in _submodule_names():  # collisions: see the test below
            assert value is getattr(importlib.import_module(hs._LAZY[name]), name), name


def test_lazy_names_do_not_shadow_submodules() -> None:
    # `import hiddenstate.forecast` sets the package attribute `forecast` to the module, so a lazy
    # name equal to a submodule's resolves to the module or to the function by import order.
    clashes = sorted(set(hs._LAZY) & _submodule_names())
    assert clashes == [], f"lazy top-level names that are also submodules: {clashes}"


@pytest.mark.parametrize("module_name", _all_modules())
def test_doctests(module_name: str) -> None:
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is None or e.name.split(".")[0] == "hiddenstate":
            raise
        pytest.skip(f"{module_name} needs the optional dependency {e.name}")
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    tests = finder.find(module, module_name)
    for test in tests:
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} doctest examples failed in {module_name}"
    if module_name in ("hiddenstate", "hiddenstate.state", "hiddenstate.model", "hiddenstate.stateful"):
        assert result.attempted > 0, f"{module_name} has no doctest examples"
