"""The import layering of ../shared/ARCHITECTURE.md and README's map, checked on
the source: every import of every module (top-level and inside functions) is
read with ``ast``, nothing is imported.

Rules:

* each layer imports only itself and the layers below it (:data:`ALLOWED`):
  data flows from volumes and meshes to images, predictions, solvers, poses
  and metrics, and nothing below knows what is above;
* xrecon's core is ``xrecon.errors``, ``xrecon.io``, ``xrecon.geometry`` and
  ``xrecon.metrics``: geometry and metrics import nothing else of the project;
  ``shape_models`` builds on that core and on nothing else of xrecon, and the
  core never imports ``shape_models``;
* no two modules import each other, directly or round a longer loop;
* only ``xrecon/sim/drr.py`` imports diffdrr; only ``xrecon/solve/pnp.py``
  imports poselib or calls OpenCV's PnP (``cv2.solvePnP*``).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Where each top-level package's source lives (``cli/`` installs as ``xrecon.cli``).
SOURCES = {"xrecon": ROOT / "xrecon", "shape_models": ROOT / "shape_models", "xrecon.cli": ROOT / "cli"}

CORE = ("xrecon.errors", "xrecon.io", "xrecon.geometry", "xrecon.metrics")

#: Layer -> the layers it may import besides itself (a module belongs to the
#: longest layer name that prefixes it). Lowest first.
ALLOWED: dict[str, tuple[str, ...]] = {
    "xrecon": (),  # the package's own __init__ (and only it: see layer_of)
    "xrecon.errors": (),
    "xrecon.io": ("xrecon.errors",),
    "xrecon.geometry": ("xrecon.errors", "xrecon.io"),
    "xrecon.metrics": ("xrecon.errors", "xrecon.io", "xrecon.geometry"),
    "shape_models": CORE,
    "xrecon.anatomy": CORE,
    "xrecon.train": CORE,
    "xrecon.imaging": CORE,
    "xrecon.sim": CORE + ("xrecon.anatomy",),
    "xrecon.solve": CORE + ("xrecon.anatomy", "xrecon.sim"),
    "xrecon.methods": CORE + ("shape_models", "xrecon.anatomy", "xrecon.train", "xrecon.imaging", "xrecon.sim",
                              "xrecon.solve"),
    "xrecon.api": CORE + ("shape_models", "xrecon.anatomy", "xrecon.train", "xrecon.imaging", "xrecon.sim",
                          "xrecon.solve", "xrecon.methods"),
    "xrecon.demo": CORE + ("shape_models", "xrecon.anatomy", "xrecon.train", "xrecon.imaging", "xrecon.sim",
                           "xrecon.solve", "xrecon.methods", "xrecon.api"),
    "xrecon.evaluate": CORE + ("shape_models", "xrecon.anatomy", "xrecon.train", "xrecon.imaging", "xrecon.sim",
                               "xrecon.solve", "xrecon.methods", "xrecon.api"),
    "xrecon.cli": CORE + ("shape_models", "xrecon.anatomy", "xrecon.train", "xrecon.imaging", "xrecon.sim",
                          "xrecon.solve", "xrecon.methods", "xrecon.api", "xrecon.demo", "xrecon.evaluate"),
}

#: Third-party packages (or call prefixes) reserved to one adapter module.
ADAPTERS = {"diffdrr": "xrecon.sim.drr", "poselib": "xrecon.solve.pnp"}
OPENCV_PNP = ("solvePnP", "SOLVEPNP_")  # cv2 attributes only xrecon.solve.pnp may touch


def _modules() -> dict[str, Path]:
    out = {}
    for package, folder in SOURCES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([package, *parts])] = path
    return out


MODULES = _modules()


def imports_of(module: str, source: str, known=MODULES) -> list[tuple[str, int, str | None]]:
    """``(imported module, line, cv2 attribute or None)`` for every import in
    ``source``, and every ``cv2.<attribute>`` use. ``from a import b`` counts
    as importing ``a.b`` when that is a module of the project, else ``a``."""
    is_package = known.get(module, Path()).name == "__init__.py"
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                out.append((full if full in known else base, node.lineno, None))
                if base == "cv2":
                    out.append(("cv2", node.lineno, alias.name))
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "cv2":
            out.append(("cv2", node.lineno, node.attr))
    return out


def layer_of(module: str) -> str | None:
    """The longest layer name that is ``module`` or a package above it
    (``xrecon`` itself names only the package's ``__init__``)."""
    best = None
    for layer in ALLOWED:
        if (module == layer or (layer != "xrecon" and module.startswith(layer + "."))) and (best is None or len(layer) > len(best)):
            best = layer
    return best


def violations(module: str, source: str, known=MODULES) -> list[str]:
    """Every broken rule in ``source`` (the text of ``module``), as messages."""
    out = []
    own = layer_of(module)
    if own is None:
        return [f"{module}: in no layer; add it to ALLOWED in tests/test_layering.py (and to README's map)"]
    for target, line, cv2_attr in imports_of(module, source, known):
        top = target.split(".")[0]
        if top in ("xrecon", "shape_models") and target != "xrecon":
            layer = layer_of(target)
            if layer is not None and layer != own and layer not in ALLOWED[own]:
                out.append(f"{module}:{line} imports {target} ({layer} is above or beside {own})")
        if top in ADAPTERS and module != ADAPTERS[top]:
            out.append(f"{module}:{line} imports {target}: only {ADAPTERS[top]} may")
        if cv2_attr and cv2_attr.startswith(OPENCV_PNP) and module != "xrecon.solve.pnp":
            out.append(f"{module}:{line} uses cv2.{cv2_attr}: only xrecon.solve.pnp wraps the PnP engines")
    return out


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _is_reexport_of_children(module: str, target: str) -> bool:
    # a package's __init__ importing its own submodules, and those importing a sibling
    # through the package, is how a package assembles itself: not a layering loop
    return target == module or target.startswith(module + ".") or module.startswith(target + ".")


def test_every_module_keeps_to_its_layer_and_adapters():
    found = [msg for module, path in MODULES.items()
             for msg in violations(module, path.read_text(encoding="utf-8"))]
    assert not found, "layering broken:\n" + "\n".join(found)


def test_no_two_modules_import_each_other():
    graph = {module: {t for t, _, _ in imports_of(module, path.read_text(encoding="utf-8"))
                      if t in MODULES and not _is_reexport_of_children(module, t)}
             for module, path in MODULES.items()}
    cycles = import_cycles(graph)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_core_and_shape_models_depend_one_way():
    users = {module for module, path in MODULES.items()
             if any(t.split(".")[0] == "shape_models"
                    for t, _, _ in imports_of(module, path.read_text(encoding="utf-8")))}
    core_users = {m for m in users if layer_of(m) in CORE}
    assert not core_users, f"xrecon's core imports shape_models: {sorted(core_users)}"
    for module, path in MODULES.items():
        if module.startswith("shape_models"):
            outside = {t for t, _, _ in imports_of(module, path.read_text(encoding="utf-8"))
                       if t.startswith("xrecon") and layer_of(t) not in CORE}
            assert not outside, f"{module} uses xrecon beyond its core: {sorted(outside)}"


@pytest.mark.parametrize("module, source, expected", [
    ("xrecon.geometry.camera", "def f():\n    from xrecon.anatomy.volume import Volume\n", "xrecon.anatomy.volume"),
    ("xrecon.metrics.shape", "from xrecon import solve\n", "xrecon.solve"),
    ("xrecon.io", "import shape_models.model\n", "shape_models.model"),
    ("shape_models.fit3d", "from xrecon.methods.recon import shape\n", "xrecon.methods.recon"),
    ("xrecon.anatomy.bone", "import diffdrr.drr\n", "only xrecon.sim.drr may"),
    ("xrecon.methods.scr.predict", "import poselib\n", "only xrecon.solve.pnp may"),
    ("xrecon.anatomy.xray_io", "import cv2\nx = cv2.solvePnPRansac\n", "cv2.solvePnPRansac"),
    ("xrecon.sim.poses", "from cv2 import SOLVEPNP_SQPNP\n", "cv2.SOLVEPNP_SQPNP"),
    ("xrecon.newthing", "", "in no layer"),
])
def test_the_checker_catches_each_kind_of_violation(module, source, expected):
    known = {**MODULES, "xrecon.methods.recon.shape": ROOT / "xrecon/methods/recon/shape.py"}
    found = violations(module, source, known)
    assert any(expected in msg for msg in found), found


def test_the_checker_allows_what_the_layers_allow_and_finds_cycles():
    assert violations("xrecon.methods.recon.predict", "from xrecon.imaging import prepare_image\n") == []
    assert violations("xrecon.anatomy.xray_io", "import cv2\ny = cv2.resize\n") == []
    assert violations("xrecon.solve.pnp", "import cv2\nimport poselib\nr = cv2.solvePnPRansac\n") == []
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []
