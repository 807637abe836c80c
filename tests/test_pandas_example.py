"""The README's pandas example, run verbatim (only its run directory replaced) on smoke runs' outputs."""
import re

import pytest
from conftest import ROOT, run_cli

pd = pytest.importorskip("pandas")


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- pandas-example -->\n```python\n(.*?)```", text, re.S)
    assert match, "README lost its pandas example"
    return match.group(1)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_readme_pandas_example_runs_on_a_smoke_run(tmp_path, fmt):
    run = tmp_path / fmt
    r = run_cli("trial=smoke", "trial.steps=2", "trial.window=2", f"output.format={fmt}", "output.plots=false",
                f"hydra.run.dir={run}")
    assert r.returncode == 0, r.stderr[-2000:]
    code, count = re.subn(r'^run = Path\("[^"]*"\)', f"run = Path({str(run)!r})", readme_example(), flags=re.M)
    assert count == 1
    ns = {}
    exec(compile(code, "README.md", "exec"), ns)
    metrics, agents, transcript = ns["metrics"], ns["agents"], ns["transcript"]
    assert len(metrics) == 2 and len(agents) == len(transcript) == 12
    assert str(metrics.stability.dtype) == "float64" and str(metrics.n_silos.dtype) == "int64"
    assert str(agents.label.dtype) == "int64" and str(agents.mirrored.dtype) == "bool"
    assert list(ns["answers"].columns[:5]) == ["replica", "t", "agent", "context", "response"]
    assert ns["final"].sum() == 6
