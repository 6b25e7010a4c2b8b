"""MIG profile names as mig-parted and go-nvlib write them (``[Nc.]Mg.Kgb[+attr|-attr]``), and what a name means
on a GPU model: a GPU instance, or a compute instance of some slices inside one."""

from __future__ import annotations

import pytest

from nodeagent.backends.gpu.sim.profiles import load_profile
from nodeagent.model.mig import MigTable
from nodeagent.model.mig_compute import compute_layout, compute_starts, pack_compute
from nodeagent.model.mig_names import ProfileName, canonical_name, gpu_instance_name

A100_40 = load_profile("a100-sxm4-40gb")
A100_TABLE = MigTable(A100_40.mig_profiles, A100_40.mig_memory_slices, A100_40.mig_compute_slices)


@pytest.mark.parametrize(
    ("text", "compute", "gpu", "gb", "attrs", "negated", "canonical", "gi"),
    [
        ("1g.10gb", 1, 1, 10, (), False, "1g.10gb", "1g.10gb"),
        ("1c.3g.20gb", 1, 3, 20, (), False, "1c.3g.20gb", "3g.20gb"),
        ("3c.7g.40gb", 3, 7, 40, (), False, "3c.7g.40gb", "7g.40gb"),
        ("7c.7g.40gb", 7, 7, 40, (), False, "7g.40gb", "7g.40gb"),
        ("1c.1g.5gb+me", 1, 1, 5, ("me",), False, "1g.5gb+me", "1g.5gb+me"),
        ("1c.2g.10gb+me", 1, 2, 10, ("me",), False, "1c.2g.10gb+me", "2g.10gb+me"),
        ("1g.10gb-me", 1, 1, 10, ("me",), True, "1g.10gb-me", "1g.10gb-me"),
        ("1c.2g.20gb-me", 1, 2, 20, ("me",), True, "1c.2g.20gb-me", "2g.20gb-me"),
        ("1g.10gb+me.all", 1, 1, 10, ("me.all",), False, "1g.10gb+me.all", "1g.10gb+me.all"),
        ("1g.10gb+me,gfx", 1, 1, 10, ("me", "gfx"), False, "1g.10gb+me,gfx", "1g.10gb+me,gfx"),
    ],
)
def test_names_parse_as_go_nvlib_reads_them(
    text: str, compute: int, gpu: int, gb: int, attrs: tuple[str, ...], negated: bool, canonical: str, gi: str
) -> None:
    p = ProfileName.parse(text)
    assert (p.compute, p.gpu, p.memory_gb, p.attributes, p.negated) == (compute, gpu, gb, attrs, negated)
    assert str(p) == canonical_name(text) == canonical
    assert p.gpu_instance == gpu_instance_name(text) == gi
    assert p.is_compute_instance == (compute != gpu)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "empty"),
        ("big", "expected Mg.Kgb or Nc.Mg.Kgb"),
        ("1g", "expected Mg.Kgb"),
        ("1g.10", "followed by 'gb'"),
        ("xg.10gb", "followed by 'g'"),
        ("1x.1g.10gb", "followed by 'c'"),
        ("1c.1g.10gb.1", "expected Mg.Kgb"),
        ("0g.10gb", "at least 1"),
        ("2c.1g.10gb", "cannot be larger"),
        ("1g.10gb+me-x", "both '+' and '-'"),
        ("1g.10gb+", "empty attribute"),
        ("1g.10gb+me,me", "given twice"),
        ("1g.10gb+1me", "must not start with a digit"),
        ("1g.10gb+.me", "start/end with a dot"),
        ("1g.10gb+m_e", "only letters, digits and dots"),
        (" 1g.10gb", "followed by 'g'"),
    ],
)
def test_malformed_names_say_why(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why.replace("+", r"\+").replace(".", r"\.")):
        ProfileName.parse(text)


def test_compute_instance_placements_inside_a_gpu_instance() -> None:
    # nvidia-smi mig -lcipp on a 7-slice GPU instance: 1c anywhere, 2c at even slices, 3c at 0 and 4, 4c and 7c at 0.
    assert compute_starts(1, 7) == (0, 1, 2, 3, 4, 5, 6)
    assert compute_starts(2, 7) == (0, 2, 4)
    assert compute_starts(3, 7) == (0, 4)
    assert compute_starts(4, 7) == (0,)
    assert compute_starts(7, 7) == (0,)
    assert compute_starts(2, 3) == (0,)
    assert compute_starts(2, 4) == (0, 2)


def test_compute_layouts_are_searched_exactly() -> None:
    assert compute_layout([4, 3], 7) == ((4, 0), (3, 4))
    # Largest-first at the lowest start (3c at 0) leaves no room for two 2c; the 3c at 4 does.
    assert compute_layout([3, 2, 2], 7) == ((2, 0), (2, 2), (3, 4))
    assert compute_layout([2, 2], 3) is None  # a 3-slice GPU instance has one 2c place
    assert compute_layout([3, 4, 1], 7) is None  # 8 slices in 7
    assert compute_layout([3], 4) is None  # no 3-slice compute instance in a 4-slice GPU instance


def test_compute_instances_share_the_fewest_gpu_instances() -> None:
    assert pack_compute(3, [1] * 6) == [((1, 0), (1, 1), (1, 2))] * 2
    assert pack_compute(7, [3, 4]) == [((4, 0), (3, 4))]
    assert pack_compute(7, [7, 1]) == [((7, 0),), ((1, 0),)]
    assert pack_compute(3, [2, 2, 1, 1]) == [((2, 0), (1, 2)), ((2, 0), (1, 2))]
    assert pack_compute(4, [3]) is None


def test_a_gpu_model_resolves_compute_instance_names() -> None:
    one = A100_TABLE.compute_profile("1c.3g.20gb")
    assert one is not None and (one.gi.name, one.slices, one.full, one.max_count) == ("3g.20gb", 1, False, 6)
    full = A100_TABLE.compute_profile("7c.7g.40gb")
    assert full is not None and (full.name, full.full, full.max_count) == ("7g.40gb", True, 1)
    me = A100_TABLE.compute_profile("1c.1g.5gb+me")
    assert me is not None and (me.gi.name, me.full) == ("1g.5gb+me", True)
    assert A100_TABLE.compute_profile("3c.4g.20gb") is None
    assert "no 3-slice compute instance" in A100_TABLE.unknown_reason("3c.4g.20gb")
    assert A100_TABLE.compute_profile("1c.3g.40gb") is None
    assert "no MIG profile '3g.40gb'" in A100_TABLE.unknown_reason("1c.3g.40gb")
