"""The README's main job, `xrecon demo`, end to end on the shipped weights and examples."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_demo_writes_every_output_and_scores_against_truth(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "xrecon.cli.main", "demo", "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    chest, pelvis = summary["chest_real_ct"], summary["pelvis_patient_wide"]
    for f in chest["files"] + pelvis["files"]:
        assert Path(f).exists(), f
    assert math.isfinite(chest["mtre_pnp_mm"]) and math.isfinite(chest["mtre_final_mm"])
    # refinement never returns a pose worse than its start (it keeps the start instead)
    assert chest["mtre_final_mm"] <= chest["mtre_pnp_mm"] + 1e-6
    assert math.isfinite(pelvis["mtre_registration_mm"])
    for name in ["registration.json", "overlay.png"]:
        assert (out / "chest" / name).exists()
    assert (out / "pelvis" / "reconstruct" / "pose.json").exists()
    assert (out / "pelvis" / "register" / "registration.json").exists()
    assert "mTRE" in proc.stdout
