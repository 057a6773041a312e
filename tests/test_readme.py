"""The README's quick starts run as written (on synthetic frames, with fewer epochs)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

pd = pytest.importorskip("pandas", reason="pandas is the data extra")
pytest.importorskip("matplotlib", reason="matplotlib is the cli extra (the fan charts)")

README = Path(__file__).resolve().parents[1] / "README.md"


def _block(heading: str) -> str:
    """The first ```python block under ``## <heading>``."""
    text = README.read_text()
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    found = re.search(r"```python\n(.*?)```", section, re.S)
    assert found, f"README: no python block under {heading!r}"
    return found.group(1)


def _hourly(n: int, start: str = "2024-01-01") -> pd.DataFrame:
    rng = np.random.default_rng(0)
    ds = pd.date_range(start, periods=n, freq="h")
    hour = ds.hour.to_numpy()
    parts = [
        pd.DataFrame({"unique_id": u, "ds": ds, "y": (10 + 4 * k) * (1 + 0.3 * np.sin(2 * np.pi * hour / 24))
                      + rng.normal(0, 0.5, n), "hour": np.sin(2 * np.pi * hour / 24)})
        for k, u in enumerate(("north", "south"))
    ]  # fmt: skip
    return pd.concat(parts, ignore_index=True)


def test_the_forecasting_quick_start_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code = _block("Quick start: forecasting with DataFrames")
    assert "epochs=25" in code
    code = code.replace("epochs=25", "epochs=1")  # the same calls, one epoch
    whole = _hourly(1000 + 48 + 1)
    pos = whole.groupby("unique_id").cumcount()
    df = whole[pos < 1000].reset_index(drop=True)
    future = whole[(pos >= 1000) & (pos < 1048)][["unique_id", "ds", "hour"]]
    new_rows = whole[pos == 1000]
    monkeypatch.chdir(tmp_path)
    namespace = {"df": df, "future": future, "new_rows": new_rows}
    exec(compile(code, str(README), "exec"), namespace)
    for name in ("fan.png", "cv.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "runs" / "fc" / "manifest.json").is_file()
    cv = namespace["cv"]
    assert cv["cutoff"].nunique() == 5 and {"HiddenState-lo-90", "y"} <= set(cv.columns)
