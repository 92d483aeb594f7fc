import json

import pytest

from xrecon.anatomy.labels import (
    GROUP_PATTERNS,
    group_members,
    read_label_names,
    resolve_structures,
    totalsegmentator_v1_names,
)
from xrecon.errors import InputError

NAMES = totalsegmentator_v1_names()


def test_totalsegmentator_table_has_known_ids():
    assert NAMES[37] == "vertebrae_T7"
    assert NAMES[116] == "sternum"
    assert NAMES[118] == "costal_cartilages"
    assert len(NAMES) == 118


def test_resolve_names_ids_and_comma_string():
    assert resolve_structures("vertebrae_T7", NAMES) == {37: "vertebrae_T7"}
    assert resolve_structures(["sternum", 37], NAMES) == {37: "vertebrae_T7", 116: "sternum"}
    assert resolve_structures("Sternum, 37", NAMES) == {37: "vertebrae_T7", 116: "sternum"}


def test_thoracic_skeleton_group_members():
    sel = resolve_structures("thoracic_skeleton", NAMES)
    names = set(sel.values())
    assert {f"vertebrae_T{i}" for i in range(1, 13)} <= names
    assert "vertebrae_L1" in names and "vertebrae_L2" not in names
    assert len([n for n in names if n.startswith("rib_")]) == 24
    assert {"sternum", "costal_cartilages"} <= names
    assert len(sel) == 13 + 24 + 2


def test_group_skips_absent_members_but_explicit_absent_raises():
    present = [31, 32, 33]  # L1, T12, T11
    assert resolve_structures("vertebrae", NAMES, present) == {31: "vertebrae_L1", 32: "vertebrae_T12", 33: "vertebrae_T11"}
    with pytest.raises(InputError, match="vertebrae_L4"):
        resolve_structures("vertebrae_L4", NAMES, present, source="mask.nii.gz")
    with pytest.raises(InputError, match="ribs"):
        resolve_structures("ribs", NAMES, present)
    with pytest.raises(InputError, match="label id 99"):
        resolve_structures(99, NAMES, present)


def test_unknown_name_lists_close_matches_and_names_file():
    with pytest.raises(InputError) as err:
        resolve_structures("vertebra_T7", NAMES, source="mask.nii.gz")
    msg = str(err.value)
    assert msg.startswith("mask.nii.gz: unknown label 'vertebra_T7'")
    assert "vertebrae_T7" in msg


def test_user_names_from_json_and_user_ids(tmp_path):
    p = tmp_path / "names.json"
    p.write_text(json.dumps({"1": "femur", "2": "pelvis_bone"}))
    names = read_label_names(p)
    assert names == {1: "femur", 2: "pelvis_bone"}
    assert resolve_structures("pelvis_bone", names) == {2: "pelvis_bone"}
    # ids without names stand for themselves
    assert resolve_structures([3], {}, present_ids=[3]) == {3: "label_3"}
    bad = tmp_path / "bad.json"
    bad.write_text('{"0": "background"}')
    with pytest.raises(InputError, match="bad.json"):
        read_label_names(bad)


def test_every_group_matches_something_in_totalsegmentator():
    for g in GROUP_PATTERNS:
        assert group_members(g, NAMES), g


def test_names_on_an_unnamed_map_explain_how_to_name_it():
    with pytest.raises(InputError, match="seg.nii.gz: label 'femur' cannot be resolved: the label map has no names"):
        resolve_structures("femur", {}, present_ids=[1, 2], source="seg.nii.gz")
    assert resolve_structures("2", {}, present_ids=[1, 2]) == {2: "label_2"}
