"""The architecture holds: the core stands alone, no import cycles, one-line missing-extra errors."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "hiddenstate"

#: Every package an extra brings; the core must work with all of them absent.
PERIPHERY = (
    "pandas",
    "pyarrow",
    "typer",
    "click",
    "rich",
    "matplotlib",
    "fastapi",
    "starlette",
    "uvicorn",
    "pydantic",
    "pydantic_core",
    "redis",
    "httpx",
    "prometheus_client",
    "h5py",
    "keras",
    "onnx",
    "onnxscript",
    "onnxruntime",
    "tensorflow",
)

# A None entry in sys.modules is how Python spells "not installed" for both `import x`
# (ModuleNotFoundError) and importlib.util.find_spec (None), which torch itself probes.
_BLOCKER = textwrap.dedent(
    """
    import sys
    BLOCKED = set({blocked!r})
    for name in BLOCKED:
        sys.modules[name] = None
    """
)


def _run_blocked(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    script = _BLOCKER.format(blocked=PERIPHERY) + textwrap.dedent(code)
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300
    )


def test_core_trains_and_saves_a_run_with_every_periphery_package_blocked(tmp_path: Path) -> None:
    result = _run_blocked(
        """
        import sys, torch, numpy as np
        import hiddenstate as hs

        arrays = [np.sin(np.arange(300, dtype=np.float32) / 7 + k)[:, None].repeat(2, 1) for k in range(4)]
        batches = hs.StatefulBatches(arrays, arrays, batch_size=4, steps=24)
        hs.check_continuity(batches)
        model = hs.SequenceModel(2, 2, [hs.LSTM(8), hs.GRU(4)])
        stateful = hs.Stateful(model, batch_size=4)
        stateful(torch.zeros(4, 5, 2))
        trainer = hs.Trainer(model, hs.TrainConfig(epochs=2, progress=False))
        history = trainer.fit(batches, run_dir="run")
        hs.save_run("run", model, scaler=None, inputs=["a", "b"], targets=["a", "b"],
                    train_config=trainer.config, lane_state=trainer.lane_state)
        run = hs.load_run("run")
        x = torch.randn(3, 10, 2)
        assert torch.equal(run.model(x)[0], model(x)[0])
        assert run.lane_state.batch_size == 4
        leaked = sorted(m for m, v in sys.modules.items() if v is not None and m.split(".")[0] in BLOCKED)
        assert not leaked, leaked
        print("epochs", len(history.rows) if hasattr(history, "rows") else "?")
        print("CORE OK")
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "CORE OK" in result.stdout
    assert (tmp_path / "run" / "manifest.json").is_file()


def test_a_missing_extra_fails_in_one_line_naming_it(tmp_path: Path) -> None:
    result = _run_blocked(
        """
        import hiddenstate as hs
        try:
            hs.read_dataset("x.csv")
        except hs.MissingExtraError as e:
            print("MESSAGE", e)
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MESSAGE pandas is not installed: pip install 'hiddenstate[data]'" in result.stdout.splitlines()


def test_the_command_line_without_its_extra_says_so_in_one_line(tmp_path: Path) -> None:
    result = _run_blocked("from hiddenstate.cli import main\nmain(['--help'])\n", tmp_path)
    assert result.returncode == 1
    assert result.stderr == "hiddenstate: typer is not installed: pip install 'hiddenstate[cli]'\n"


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every hiddenstate module ``path`` imports, at any depth (lazy imports count too)."""
    name = _module_name(path)
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "hiddenstate"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            if module.split(".")[0] != "hiddenstate":
                continue
            for alias in node.names:  # `from hiddenstate.runs import run` names a module, not the package
                target = SRC / Path(*f"{module}.{alias.name}".split("."))
                if target.with_suffix(".py").exists() or (target / "__init__.py").exists():
                    found.add(f"{module}.{alias.name}")
                else:
                    found.add(module)
    found.discard(name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        # the package root's __init__ re-exports the core; importing hiddenstate.x runs it first
        # in Python, but that is not a dependency of one module on another
        graph[name] = {m for m in _imports(path) if m in modules and m != "hiddenstate"}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_two_modules_import_each_other() -> None:
    graph = _graph()
    assert len(graph) > 30 and graph["hiddenstate.stateful"] >= {"hiddenstate.model", "hiddenstate.state"}
    assert _cycles(graph) == []


def test_the_cycle_check_finds_a_cycle() -> None:
    graph = _graph()
    graph["hiddenstate.state"] = graph["hiddenstate.state"] | {"hiddenstate.stateful"}  # state -> stateful -> state
    assert any({"hiddenstate.state", "hiddenstate.stateful"} <= set(c) for c in _cycles(graph))
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


CORE = ("hiddenstate.spec", "hiddenstate.state", "hiddenstate.model", "hiddenstate.stateful", "hiddenstate.errors")


def test_dependencies_point_one_way_from_the_core() -> None:
    graph = _graph()
    outward = ("hiddenstate.cli", "hiddenstate.serve", "hiddenstate.interop", "hiddenstate.ett", "hiddenstate.train")
    for core in CORE:
        reached = _reachable(graph, core)
        assert not [m for m in reached if m.startswith(outward)], (core, sorted(reached))


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for w in graph[todo.pop()]:
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return seen
