"""The package's shape: imports point down the layers, no import circle, no private name across modules,
no typer outside cli/ (imports read from the source as written, function-level ones included)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "src" / "tunesmith"

# Highest first. A module may import its own layer or any lower one (never a higher one).
LAYERS: list[set[str]] = [
    {"cli"},
    {"serve", "jobs", "lifecycle.source", "ddp"},
    {"pipeline", "verify", "sweep", "advise", "chat", "tracking", "runs", "eval.stage", "eval.select", "eval.linear_probe", "eval.backward", "lifecycle",
     "lifecycle.feedback", "lifecycle.drift"},
    {"tuned", "session", "export", "gguf_export"},
    {"objectives"},
    {"eval"},
    {"train"},
    {"methods", "data"},
    {"generation", "constrained", "render", "rundir", "models", "config", "config_methods", "safe_yaml", "durations", "fsutil", "errors"},
]


def _modules() -> dict[str, Path]:
    mods = {}
    for p in ROOT.rglob("*.py"):
        parts = p.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = p
    return mods


def _layer(module: str) -> int | None:
    best, found = -1, None
    for i, layer in enumerate(LAYERS):
        for prefix in layer:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, found = len(prefix), i
    return found


def _imports(mods: dict[str, Path]):
    """(importer, imported module, imported name, line) for every tunesmith-internal import."""
    for m, p in mods.items():
        pkg = m if p.name == "__init__.py" else m.rpartition(".")[0]
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = [x for x in pkg.split(".") if x]
                    base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                    target = ".".join(base + ([node.module] if node.module else []))
                elif (node.module or "").startswith("tunesmith"):
                    target = node.module.removeprefix("tunesmith").lstrip(".")
                else:
                    continue
                for a in node.names:
                    dest = f"{target}.{a.name}".strip(".")
                    while dest not in mods and "." in dest:
                        dest = dest.rpartition(".")[0]
                    if dest not in mods:
                        dest = target
                    yield m, dest, a.name, node.lineno
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("tunesmith."):
                        yield m, a.name.removeprefix("tunesmith."), a.name, node.lineno


def test_every_module_has_a_layer():
    missing = [m for m in _modules() if m and _layer(m) is None]
    assert not missing, f"modules without a layer in tests/test_layers.py: {missing}"


def test_imports_point_down_and_never_import_private_names():
    mods = _modules()
    upward, private = [], []
    for m, dest, name, line in _imports(mods):
        if not m or not dest or dest == m:
            continue
        lm, ld = _layer(m), _layer(dest)
        if lm is not None and ld is not None and ld < lm:
            upward.append(f"{m}:{line} imports {dest} (a higher layer)")
        if name.startswith("_") and not name.startswith("__"):
            private.append(f"{m}:{line} imports private {dest}.{name}")
    assert not upward, "\n".join(upward)
    assert not private, "\n".join(private)


def test_no_import_circle():
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for m, dest, _, _ in _imports(mods):
        if m and dest and dest != m and not m.startswith(dest + "."):   # a package's own submodules
            graph.setdefault(m, set()).add(dest)
    seen, on_path, cycles = set(), [], []

    def visit(v):
        if v in on_path:
            cycles.append(on_path[on_path.index(v):] + [v])
            return
        if v in seen:
            return
        seen.add(v)
        on_path.append(v)
        for w in sorted(graph.get(v, ())):
            visit(w)
        on_path.pop()

    for v in sorted(graph):
        visit(v)
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles[:5])


def test_library_modules_do_not_import_typer():
    offenders = []
    for m, p in _modules().items():
        if m == "cli" or m.startswith("cli."):
            continue
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(n.split(".")[0] in ("typer", "click") for n in names):
                offenders.append(f"{m}:{node.lineno}")
    assert not offenders, offenders


def test_no_source_file_over_600_lines():
    long = {str(p.relative_to(ROOT)): n for p in ROOT.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 600}
    assert not long, long
