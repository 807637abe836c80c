"""The package's layering (README "Architecture"): which folder may import which, no import circles, and
agent kinds that plug in through one registry line."""
import ast
import importlib
from pathlib import Path

import yaml

from conftest import ROOT
from tensorsim.agents import KINDS, kind_module

PKG = ROOT / "tensorsim"

# what each part of the package may import from tensorsim (its own part always). Top-level modules are
# named one by one; the CLIs (__main__, report, analyze, compare, overrides, export_adapters) may import anything.
ALLOWED = {
    "core": {"errors"},
    "lm": {"core", "errors"},
    "agents": {"core", "lm", "errors", "knowledge"},
    "analysis": {"core", "errors", "knowledge", "outputs", "lm.models"},  # lm.models: the embedder of --embed
    "errors": set(),
    "data": set(),
    "knowledge": {"errors"},
    "outputs": {"core", "errors"},
    "checkpoint": {"errors", "outputs"},
    "config": {"agents", "core", "errors", "outputs"},
    "preempt": set(),
    "run": {"agents", "analysis", "checkpoint", "config", "core", "errors", "lm", "outputs", "preempt"},
}
CLI = {"__main__", "report", "analyze", "compare", "overrides", "export_adapters"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every tensorsim module `path` imports, at the top or inside a function, as dotted names under tensorsim."""
    name = module_name(path)
    package = name.split(".")[:-1] if path.name != "__init__.py" else name.split(".")
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name[len("tensorsim."):] for a in node.names if a.name.startswith("tensorsim.")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)] + (node.module.split(".") if node.module else [])
            elif node.module and node.module.startswith("tensorsim"):
                base = node.module.split(".")[1:]
            else:
                continue
            for alias in node.names:  # `from . import rng` names a module; `from .x import f` names x
                candidate = ".".join(base + [alias.name])
                found.add(candidate if _is_module(candidate) else ".".join(base))
    return {m for m in found if m}


def _is_module(dotted: str) -> bool:
    p = PKG.joinpath(*dotted.split("."))
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in PKG.rglob("*.py")}


def part(module: str) -> str:
    return module.split(".")[0]


def test_every_import_goes_down_the_layers():
    broken = []
    for module, deps in graph().items():
        if not module or part(module) in CLI:
            continue
        allowed = ALLOWED[part(module)] | {part(module)}
        for dep in deps:
            if part(dep) not in allowed and dep not in allowed:
                broken.append(f"{module} -> {dep}")
    assert not broken, broken


def test_no_import_circles():
    g = graph()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(m, path):
        state[m] = 1
        for d in sorted(g.get(m, ())):
            if state.get(d) == 1:
                raise AssertionError("import circle: " + " -> ".join(path[path.index(d):] + [d]))
            if d not in state:
                visit(d, path + [d])
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [m])


def test_the_checker_sees_a_circle_and_an_upward_import(tmp_path, monkeypatch):
    """The two tests above would pass vacuously if imports_of missed relative imports: check it on files."""
    core = tmp_path / "core"
    core.mkdir()
    (tmp_path / "__init__.py").write_text("")
    (core / "__init__.py").write_text("")
    (core / "a.py").write_text("from .b import f\nfrom .. import run\n")
    (core / "b.py").write_text("def f():\n    from . import a\n")
    (tmp_path / "run.py").write_text("")
    monkeypatch.setattr(__import__(__name__), "PKG", tmp_path)
    assert imports_of(core / "a.py") == {"core.b", "run"}
    assert imports_of(core / "b.py") == {"core.a"}


def test_each_agent_kind_is_one_module_one_conf_file_and_one_registry_line():
    confs = {p.stem: yaml.safe_load(p.read_text()) for p in (ROOT / "conf" / "agents").glob("*.yaml")}
    assert set(confs) == set(KINDS)
    for kind, dotted in KINDS.items():
        assert confs[kind]["kind"] == kind
        module = kind_module(kind)
        assert module is importlib.import_module(dotted) and dotted.startswith("tensorsim.agents.")
        assert isinstance(module.WRITES_TEXT, bool)
        for fn in ("uses_graph", "validate", "build"):
            assert callable(getattr(module, fn)), (kind, fn)
    # the runner and the validator never name a kind: a new kind changes neither
    for name in ("run.py", "config.py", "checkpoint.py"):
        text = (PKG / name).read_text()
        for kind in KINDS:
            assert f'"{kind}"' not in text and f"'{kind}'" not in text, (name, kind)
