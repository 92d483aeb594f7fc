"""Start-up time of the ``xrecon`` command and of ``import xrecon.api``.

Every case runs in a fresh Python process (cold interpreter, warm OS file
cache), ``--repeats`` times; the table gives the median and the maximum wall
time of the whole process, from spawn to exit. Cases:

* ``xrecon --help`` and ``xrecon <command> --help`` for every command and
  sub-command the CLI registers (read from the Typer app, so a new command is
  measured without editing this file);
* ``import xrecon.api``;
* refused bad input: ``xrecon reconstruct empty.png`` and
  ``xrecon register --ct missing.nii empty.png`` on a zero-byte image written to
  a temporary folder (the command must print ``xrecon: error: ...`` and exit
  with code 2, otherwise the case is reported as wrong);
* for reference (no target): ``xrecon register --ct missing.nii x.png`` with a
  valid image, refused only once the image has been read (its camera needs
  torch), ``import torch`` alone, the floor of anything that needs torch, and
  ``python -c pass``, the interpreter's own start (it shows how loaded the
  machine was).

Each case is also run once more, untimed, to record whether it loaded torch.
Targets (issue 31, 2 cores): ``--help`` < 0.5 s, a refused bad input < 1 s,
``import xrecon.api`` < 1.5 s (median).

    python benchmarks/bench_startup.py              # 5 runs per case (about 1 min)
    python benchmarks/bench_startup.py --repeats 9
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _registration_data as data  # noqa: E402  (machine(), today(), write_results(); imports numpy only)

TARGET_HELP_S = 0.5
TARGET_REFUSAL_S = 1.0
TARGET_API_S = 1.5

# Runs a CLI command in-process and reports on exit whether torch was loaded.
_PROBE = ("import atexit, sys\n"
          "atexit.register(lambda: sys.stderr.write('\\nTORCH_LOADED=%d\\n' % ('torch' in sys.modules)))\n")


def _cli_argv() -> list[str]:
    """The installed console script next to this interpreter, else ``python -c`` on its entry point."""
    script = Path(sys.executable).with_name("xrecon")
    if script.exists():
        return [str(script)]
    found = shutil.which("xrecon")
    if found:
        return [found]
    return [sys.executable, "-c", "import sys; from xrecon.cli.main import run; sys.argv[0] = 'xrecon'; run()"]


def _help_paths() -> list[list[str]]:
    """``[]`` (the root) and the path of every registered command and sub-command."""
    import typer.main

    from xrecon.cli.main import app

    paths: list[list[str]] = [[]]

    def walk(cmd, prefix):
        for name, sub in sorted(getattr(cmd, "commands", {}).items()):
            paths.append(prefix + [name])
            walk(sub, prefix + [name])

    walk(typer.main.get_command(app), [])
    return paths


def cases(tmp: Path) -> list[dict]:
    """The measured cases: name, argv, kind (help / api / refusal / reference), expected exit code."""
    empty = tmp / "empty.png"
    empty.write_bytes(b"")
    valid = tmp / "x.png"
    from PIL import Image
    import numpy as np

    Image.fromarray((np.arange(64 * 64) % 251).astype(np.uint8).reshape(64, 64)).save(valid)
    missing_ct = tmp / "missing.nii"
    cli = _cli_argv()
    out = []
    for path in _help_paths():
        out.append({"name": " ".join(["xrecon"] + path + ["--help"]), "argv": cli + path + ["--help"],
                    "kind": "help", "exit": 0, "cli": path + ["--help"]})
    out.append({"name": "import xrecon.api", "argv": [sys.executable, "-c", "import xrecon.api"], "kind": "api",
                "exit": 0, "code": "import xrecon.api"})
    refusals = [("xrecon reconstruct empty.png", ["reconstruct", str(empty), "--out", str(tmp / "out")]),
                ("xrecon register --ct missing.nii empty.png",
                 ["register", "--ct", str(missing_ct), str(empty), "--out", str(tmp / "out")])]
    for name, args in refusals:
        out.append({"name": name, "argv": cli + args, "kind": "refusal", "exit": 2, "cli": args})
    out.append({"name": "xrecon register --ct missing.nii x.png (valid image)",
                "argv": cli + ["register", "--ct", str(missing_ct), str(valid), "--sdd", "1000",
                               "--pixel-spacing", "1", "--out", str(tmp / "out")],
                "kind": "reference", "exit": 2,
                "cli": ["register", "--ct", str(missing_ct), str(valid), "--sdd", "1000", "--pixel-spacing", "1",
                        "--out", str(tmp / "out")]})
    out.append({"name": "import torch", "argv": [sys.executable, "-c", "import torch"], "kind": "reference",
                "exit": 0, "code": "import torch"})
    out.append({"name": "python -c pass (the interpreter alone)", "argv": [sys.executable, "-c", "pass"],
                "kind": "reference", "exit": 0, "code": "pass"})
    return out


def _run(argv: list[str], cwd: Path) -> tuple[float, float, int, str]:
    """Wall time, CPU time (user + system, the process and its children), exit code, output."""
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="0", COLUMNS="100")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, proc.returncode, proc.stdout + proc.stderr


def _loads_torch(case: dict, cwd: Path) -> bool | None:
    """One untimed run of the case that reports whether torch ended up in ``sys.modules``."""
    if "code" in case:
        code = _PROBE + case["code"] + "\n"
    else:
        code = (_PROBE + "from xrecon.cli.main import run\n"
                f"sys.argv = ['xrecon'] + {case['cli']!r}\nrun()\n")
    _t, _cpu, _rc, text = _run([sys.executable, "-c", code], cwd)
    for line in text.splitlines():
        if line.startswith("TORCH_LOADED="):
            return line.endswith("1")
    return None


def target_for(kind: str) -> float | None:
    return {"help": TARGET_HELP_S, "refusal": TARGET_REFUSAL_S, "api": TARGET_API_S}.get(kind)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5, help="cold runs per case (default 5)")
    ap.add_argument("--name", default="bench_startup", help="results file name (benchmarks/results/NAME.json/.md)")
    args = ap.parse_args(argv)

    load_start = os.getloadavg()
    date = data.today()
    rows = []
    with tempfile.TemporaryDirectory(prefix="xrecon_startup_") as tmp_name:
        tmp = Path(tmp_name)
        todo = cases(tmp)
        _run(todo[0]["argv"], tmp)  # warm the OS file cache (not the interpreter) once
        times = {c["name"]: [] for c in todo}
        cpu_times = {c["name"]: [] for c in todo}
        problems = {c["name"]: set() for c in todo}
        for rep in range(args.repeats):  # round robin: every case sees the same spread of machine load
            for case in todo:
                dt, cpu, rc, text = _run(case["argv"], tmp)
                times[case["name"]].append(dt)
                cpu_times[case["name"]].append(cpu)
                if rc != case["exit"]:
                    problems[case["name"]].add(f"exit {rc} (expected {case['exit']}): "
                                               f"{text.strip().splitlines()[-1:]}")
                elif case["exit"] == 2 and "xrecon: error:" not in text:
                    problems[case["name"]].add("exit 2 without an 'xrecon: error:' line")
            print(f"round {rep + 1} of {args.repeats} done", flush=True)
        for case in todo:
            t = times[case["name"]]
            target = target_for(case["kind"])
            row = {"case": case["name"], "kind": case["kind"], "runs": len(t),
                   "median_s": statistics.median(t), "max_s": max(t), "min_s": min(t),
                   "times_s": t, "cpu_median_s": statistics.median(cpu_times[case["name"]]),
                   "cpu_times_s": cpu_times[case["name"]], "target_s": target, "loads_torch": _loads_torch(case, tmp),
                   "problems": sorted(problems[case["name"]])}
            row["pass"] = (not row["problems"]) and (target is None or row["median_s"] < target)
            rows.append(row)
            print(f"{row['case']:<60} median {row['median_s']:.2f} s  max {row['max_s']:.2f} s"
                  f"  cpu {row['cpu_median_s']:.2f} s"
                  f"  torch {row['loads_torch']}" + (f"  PROBLEM {row['problems']}" if row["problems"] else ""),
                  flush=True)
    load_end = os.getloadavg()
    targeted = [r for r in rows if r["target_s"] is not None]
    accepted = all(r["pass"] for r in targeted)

    md = [f"# Start-up time ({date})", "",
          f"Machine: {data.machine()}; load average at start {load_start[0]:.2f} / {load_start[1]:.2f} / "
          f"{load_start[2]:.2f} (1 / 5 / 15 min), at the end {load_end[0]:.2f}. Each case is a fresh process "
          f"(cold interpreter, warm file cache), {args.repeats} runs taken in turn with the other cases, wall time "
          "from spawn to exit (targets apply to it); CPU time is user + system time of the process, less "
          "sensitive to the load than the wall time. The machine is shared with other jobs: compare medians "
          "measured in the same run.",
          "",
          "| case | median (s) | max (s) | CPU time, median (s) | target (s) | loads torch | result |",
          "|---|---|---|---|---|---|---|"]
    for r in rows:
        target = "-" if r["target_s"] is None else f"< {r['target_s']:.1f}"
        result = ("WRONG: " + "; ".join(r["problems"])) if r["problems"] else (
            "-" if r["target_s"] is None else ("pass" if r["pass"] else "FAIL"))
        md.append(f"| `{r['case']}` | {r['median_s']:.2f} | {r['max_s']:.2f} | {r['cpu_median_s']:.2f} | {target} "
                  f"| {'?' if r['loads_torch'] is None else ('yes' if r['loads_torch'] else 'no')} | {result} |")
    md += ["", f"Acceptance (every targeted case's median under its target, right exit code): "
               f"**{'PASS' if accepted else 'FAIL'}**", "",
           "Command: `python benchmarks/bench_startup.py"
           + ("" if args.repeats == 5 else f" --repeats {args.repeats}") + "`", ""]
    payload = {"date": date, "machine": data.machine(), "cpu_count": os.cpu_count(),
               "python": sys.version.split()[0], "load_average_start": list(load_start),
               "load_average_end": list(load_end), "repeats": args.repeats, "accepted": accepted,
               "targets_s": {"help": TARGET_HELP_S, "refusal": TARGET_REFUSAL_S, "api": TARGET_API_S},
               "rows": rows}
    j, m = data.write_results(args.name, payload, "\n".join(md))
    print("\n".join(md))
    print(f"wrote {j} and {m}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
