"""The newcomer's path, timed: README's set-up on a clean clone.

Clones the repository's current commit into a temporary folder and runs, as
README says, ``make env`` (the pinned environment in ``.venv`` from
``requirements.lock``; the system library is installed only when missing) and
``make test``, with an empty xrecon cache (``XRECON_CACHE_DIR``), as CI does.
Reports wall time of each step, the size of ``.venv`` and the test count.

    python benchmarks/bench_setup.py

Writes benchmarks/results/bench_setup.{json,md}.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def _du_mb(path: Path) -> float:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            p = os.path.join(dirpath, f)
            if not os.path.islink(p):
                total += os.stat(p).st_size
    return total / 1e6


def _timed(cmd: list[str], cwd: Path, env: dict) -> tuple[float, int, str]:
    t0 = time.monotonic()
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    return time.monotonic() - t0, res.returncode, res.stdout + res.stderr


def main() -> int:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="xrecon_setup_") as tmp:
        clone = Path(tmp) / "xrecon"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        env = {**os.environ, "XRECON_CACHE_DIR": str(Path(tmp) / "cache")}
        env.pop("VIRTUAL_ENV", None)
        t_env, rc_env, out_env = _timed(["make", "env"], clone, env)
        venv_mb = _du_mb(clone / ".venv") if (clone / ".venv").is_dir() else float("nan")
        t_test, rc_test, out_test = _timed(["make", "test"], clone, env)
    m = re.search(r"(\d+) passed", out_test)
    failed = re.search(r"(\d+) failed", out_test)
    summary = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()}-core CPU ({platform.machine()}), no GPU, Python {platform.python_version()}, "
                   f"load average at the end {os.getloadavg()[0]:.1f}",
        "commit": commit,
        "make_env": {"seconds": t_env, "exit": rc_env, "venv_mb": venv_mb},
        "make_test": {"seconds": t_test, "exit": rc_test, "passed": int(m.group(1)) if m else None,
                      "failed": int(failed.group(1)) if failed else 0},
        "command": "python benchmarks/bench_setup.py",
    }
    md = ["# README's set-up on a clean clone", "",
          f"{summary['date']}; {summary['machine']}; commit `{commit[:10]}`. The system library was "
          "already installed, so `make env` timed the environment only.", "",
          "| step | exit | wall time | result |", "|---|---|---|---|",
          f"| `make env` | {rc_env} | {t_env / 60:.1f} min | `.venv` {venv_mb / 1e3:.2f} GB |",
          f"| `make test` | {rc_test} | {t_test / 60:.1f} min | {summary['make_test']['passed']} passed, "
          f"{summary['make_test']['failed']} failed |", "", f"Command: `{summary['command']}`."]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bench_setup.json").write_text(json.dumps(summary, indent=1))
    (RESULTS / "bench_setup.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    if rc_env or rc_test:
        print((out_env + out_test)[-3000:], file=sys.stderr)
    return 0 if not (rc_env or rc_test) else 1


if __name__ == "__main__":
    sys.exit(main())
