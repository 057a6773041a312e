"""The service's optional dependencies: nothing heavy loads before it is used, and a missing
extra fails in one line naming ``pip install 'hiddenstate[serve]'``.

Each check runs in a fresh interpreter whose import system refuses the blocked packages, as if
they were not installed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hiddenstate.serve.testing import demo_run

SRC = Path(__file__).resolve().parents[1] / "src"

BLOCK = """
import sys
BLOCKED = {blocked!r}
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, Blocker())
"""


def python(code: str, *blocked: str, args: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    prelude = BLOCK.format(blocked=set(blocked))
    env = {"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-c", prelude + code, *args], capture_output=True, text=True, timeout=120, env=env
    )


def test_the_client_and_the_package_load_without_fastapi_or_redis() -> None:
    done = python(
        "import hiddenstate.serve, hiddenstate.serve.client\n"
        "from hiddenstate.serve.client import Client, RequestError\n"
        "from hiddenstate.errors import RequestError as Same\n"
        "assert RequestError is Same\n"
        "print(sorted(m for m in ('fastapi', 'starlette', 'redis', 'uvicorn', 'pydantic') if m in sys.modules))\n"
        "print('httpx' in sys.modules)",
        "fastapi", "starlette", "redis", "uvicorn", "pydantic",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == "[]\nTrue\n"


def test_importing_the_package_loads_no_web_framework_or_redis() -> None:
    done = python(
        "import hiddenstate.serve\n"
        "print(sorted(m for m in ('fastapi', 'starlette', 'redis', 'uvicorn', 'httpx') if m in sys.modules))"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "[]\n"


@pytest.mark.parametrize(
    ("code", "blocked", "package"),
    [
        ("from hiddenstate.serve import create_app", "fastapi", "fastapi"),
        ("import hiddenstate.serve.client", "httpx", "httpx"),
        ("from hiddenstate.serve import open_store; open_store('redis://127.0.0.1:1/0')", "redis", "redis"),
    ],
)
def test_a_missing_extra_is_one_line_naming_it(code: str, blocked: str, package: str) -> None:
    done = python(
        "from hiddenstate.errors import MissingExtraError\n"
        f"try:\n    {code}\nexcept MissingExtraError as e:\n    print(e)\n",
        blocked,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{package} is not installed: pip install 'hiddenstate[serve]'\n"


def test_sqlite_stores_work_without_redis(tmp_path: Path) -> None:
    done = python(
        "from hiddenstate.serve import open_store\n"
        f"store = open_store('sqlite://{tmp_path / 's.db'}')\n"
        "print(store.count(), store.local, 'redis' in sys.modules)",
        "redis",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "0 True False\n"


def test_the_serve_command_without_fastapi_says_what_to_install(tmp_path: Path) -> None:
    run_dir = demo_run(tmp_path / "run")
    done = python("from hiddenstate.serve.command import main\nmain()", "fastapi", args=(str(run_dir), "--port", "1"))
    assert done.returncode == 1
    assert done.stderr == "Error: fastapi is not installed: pip install 'hiddenstate[serve]'\n"
