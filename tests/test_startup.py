"""Start-up: what the light entry points import.

``import torch`` alone takes seconds on a 2-core machine, so ``import xrecon.api``,
``xrecon --help`` (every command's) and a refused bad input must not import it,
and no module imports roma (whose import loads ``torch._dynamo``). Each check
runs in a fresh interpreter and looks at ``sys.modules`` at exit; the times
themselves are measured by ``benchmarks/bench_startup.py``, not here.
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "roma", "kornia", "open3d", "diffdrr", "cv2", "scipy", "sklearn", "matplotlib", "trimesh")

# Reports, at exit, which of HEAVY are loaded (as JSON on the last stderr line).
_PROBE = ("import atexit, json, sys\n"
          f"atexit.register(lambda: sys.stderr.write('\\nLOADED=' + json.dumps([m for m in {HEAVY!r} "
          "if m in sys.modules]) + '\\n'))\n")


def _run(code: str, cwd: Path) -> tuple[int, str, list[str]]:
    """Run ``code`` in a fresh interpreter; exit code, stderr + stdout, heavy modules loaded at exit."""
    proc = subprocess.run([sys.executable, "-c", _PROBE + code], cwd=cwd, capture_output=True, text=True,
                          timeout=300)
    text = proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("LOADED=")]
    assert lines, f"the probe did not report (exit {proc.returncode}):\n{text[-2000:]}"
    return proc.returncode, text, json.loads(lines[-1][len("LOADED="):])


def _cli(args: list[str]) -> str:
    return f"from xrecon.cli.main import run\nsys.argv = ['xrecon'] + {args!r}\nrun()\n"


def test_import_api_loads_neither_torch_nor_roma(tmp_path):
    rc, text, loaded = _run("import xrecon.api\nimport xrecon.geometry\nimport xrecon.anatomy.xray_io\n", tmp_path)
    assert rc == 0, text
    assert loaded == [], f"import xrecon.api loaded {loaded}"


def test_help_of_every_command_loads_no_heavy_library(tmp_path):
    """``xrecon --help`` and ``xrecon <command> [<sub-command>] --help`` for every
    command the Typer app registers, all in one interpreter."""
    code = ("import typer.main\n"
            "from xrecon.cli.main import app\n"
            "paths = [[]]\n"
            "def walk(cmd, prefix):\n"
            "    for name, sub in sorted(getattr(cmd, 'commands', {}).items()):\n"
            "        paths.append(prefix + [name]); walk(sub, prefix + [name])\n"
            "walk(typer.main.get_command(app), [])\n"
            "assert len(paths) > 5, paths\n"
            "for p in paths:\n"
            "    rc = app(args=p + ['--help'], prog_name='xrecon', standalone_mode=False)\n"
            "    assert rc in (None, 0), (p, rc)\n"
            "print('HELPS', len(paths))\n")
    rc, text, loaded = _run(code, tmp_path)
    assert rc == 0 and "HELPS" in text, text[-3000:]
    assert "Usage: xrecon register" in text and "Usage: xrecon train scr" in text
    assert loaded == [], f"--help loaded {loaded}"


@pytest.mark.parametrize("args", [
    ["reconstruct", "{empty}"],
    ["register", "--ct", "{ct}", "{empty}"],
], ids=["reconstruct", "register"])
def test_zero_byte_image_is_refused_before_torch(tmp_path, args):
    (tmp_path / "empty.png").write_bytes(b"")
    ct = ROOT / "examples" / "pelvis_ct.nii.gz"  # a real CT: the image is what is wrong
    args = [a.format(empty=tmp_path / "empty.png", ct=ct) for a in args]
    rc, text, loaded = _run(_cli(args + ["--out", str(tmp_path / "out")]), tmp_path)
    assert rc == 2, text[-3000:]
    assert "xrecon: error:" in text and "empty.png" in text
    assert loaded == [], f"refusing a zero-byte image loaded {loaded}"
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_bad_ground_truth_file_is_refused_before_torch(tmp_path):
    (tmp_path / "gt.json").write_text("{not json")
    (tmp_path / "pred.json").write_text("{}")
    rc, text, loaded = _run(_cli(["evaluate", str(tmp_path / "pred.json"), str(tmp_path / "gt.json"),
                                  "--out", str(tmp_path / "out")]), tmp_path)
    assert rc == 2 and "xrecon: error:" in text, text[-3000:]
    assert "torch" not in loaded, loaded


def test_no_module_imports_roma():
    """roma was replaced by :mod:`xrecon.geometry.se3` (its import costs seconds);
    every ``import`` statement of the shipped code is read, top level and inside
    functions."""
    offenders = []
    for folder in ("xrecon", "cli", "shape_models"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
                offenders += [f"{path.relative_to(ROOT)}:{node.lineno}" for n in names if n.split(".")[0] == "roma"]
    assert offenders == []
