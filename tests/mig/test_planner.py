"""The planner against the whole H100 placement table, checked by an independent brute-force search.

The brute force enumerates every set of non-overlapping (profile, start) placements on the 8 memory
slices, keeps those within the GPU's compute slices, per-profile maxima and one media-extension instance,
and takes their profile multisets: the layouts that exist. It shares no code with the planner's search.
"""

from __future__ import annotations

import functools
import itertools
import random
from collections import Counter
from collections.abc import Iterator

from nodeagent.mig.config import MigEntry
from nodeagent.mig.planner import Action, GpuMigLayout, GpuPlan, plan_gpu
from nodeagent.model.mig import misfit_reason
from tests.mig.support import H100, state

# The H100 table written out again from the real capture (nvidia-smi mig -lgipp), not read from the model file.
TABLE = {
    # name: (starts, size, compute, max, media)
    "1g.10gb": ((0, 1, 2, 3, 4, 5, 6), 1, 1, 7, False),
    "1g.10gb+me": ((0, 1, 2, 3, 4, 5, 6), 1, 1, 1, True),
    "1g.20gb": ((0, 2, 4, 6), 2, 1, 4, False),
    "2g.20gb": ((0, 2, 4), 2, 2, 3, False),
    "3g.40gb": ((0, 4), 4, 3, 2, False),
    "4g.40gb": ((0,), 4, 4, 1, False),
    "7g.80gb": ((0,), 8, 7, 1, False),
}
NAMES = sorted(TABLE)
Packing = frozenset[tuple[str, int]]


def test_table_matches_the_model_file() -> None:
    model = {p.name: (p.starts, p.slices, p.compute_slices, p.max_count, p.media_extensions) for p in H100.mig_profiles}
    assert model == TABLE
    assert (H100.mig_memory_slices, H100.mig_compute_slices) == (8, 7)


def _valid(packing: Packing) -> bool:
    names = Counter(name for name, _ in packing)
    if sum(TABLE[n][2] for n, _ in packing) > 7:
        return False
    if any(n > TABLE[name][3] for name, n in names.items()):
        return False
    return sum(1 for n, _ in packing if TABLE[n][4]) <= 1


@functools.cache
def packings() -> tuple[Packing, ...]:
    """Every valid set of placements (brute force over the memory slices, left to right)."""
    out: list[Packing] = []

    def walk(slice_: int, chosen: tuple[tuple[str, int], ...]) -> None:
        if slice_ >= 8:
            if _valid(frozenset(chosen)):
                out.append(frozenset(chosen))
            return
        walk(slice_ + 1, chosen)  # leave this slice empty
        for name, (starts, size, *_rest) in TABLE.items():
            if slice_ in starts and slice_ + size <= 8:
                walk(slice_ + size, (*chosen, (name, slice_)))

    walk(0, ())
    return tuple(out)


@functools.cache
def feasible() -> frozenset[tuple[tuple[str, int], ...]]:
    return frozenset(_key(Counter(n for n, _ in p)) for p in packings())


def _key(counts: Counter[str] | dict[str, int]) -> tuple[tuple[str, int], ...]:
    return tuple(sorted((k, v) for k, v in counts.items() if v))


def multisets(max_size: int = 7) -> Iterator[tuple[str, ...]]:
    for size in range(1, max_size + 1):
        yield from itertools.combinations_with_replacement(NAMES, size)


def entry(counts: dict[str, int] | Counter[str], enabled: bool = True) -> MigEntry:
    return MigEntry("t", 0, None, (), enabled, tuple(sorted(counts.items())))


def _check_layout(plan: GpuPlan, before: GpuMigLayout, want: Counter[str]) -> None:
    """The layout after the plan is a valid packing with exactly the wanted profiles."""
    destroyed = {s.gpu_instance_id for s in plan.steps if s.action == Action.DESTROY}
    after = [(i.profile, i.start) for i in before.instances if i.gpu_instance_id not in destroyed]
    after += [(s.profile, s.start) for s in plan.steps if s.action == Action.CREATE]
    cells = [c for name, start in after for c in range(start, start + TABLE[name][1])]
    assert len(cells) == len(set(cells)), f"overlap in {after}"
    assert all(start in TABLE[name][0] for name, start in after)
    assert _valid(frozenset(after))
    assert Counter(n for n, _ in after) == want


def test_brute_force_finds_the_known_facts() -> None:
    f = feasible()
    assert _key(Counter({"3g.40gb": 1, "2g.20gb": 2})) in f
    assert _key(Counter({"4g.40gb": 1, "2g.20gb": 2})) not in f
    assert _key(Counter({"1g.10gb": 7})) in f
    assert _key(Counter({"3g.40gb": 2, "1g.10gb": 1})) not in f


def test_every_combination_of_up_to_seven_instances_on_an_empty_gpu() -> None:
    """3,431 layouts: planned exactly when the brute force finds one, with a valid placement."""
    empty = state(())
    checked = accepted = 0
    for combo in multisets():
        want = Counter(combo)
        plan = plan_gpu(empty, entry(want))
        exists = _key(want) in feasible()
        if exists:
            assert not plan.error, f"{combo}: {plan.error}"
            assert all(s.action == Action.CREATE for s in plan.steps)
            _check_layout(plan, empty, want)
            accepted += 1
        else:
            assert plan.error, f"{combo} has no placement but was planned: {plan.steps}"
            assert "does not fit" in plan.error
        checked += 1
    assert checked == 3431
    assert accepted == len(feasible()) - 1  # every feasible non-empty layout was reached


def test_three_g_beside_two_two_g_sits_at_four() -> None:
    plan = plan_gpu(state(()), entry({"3g.40gb": 1, "2g.20gb": 2}))
    assert [(s.profile, s.start) for s in plan.steps] == [("2g.20gb", 0), ("2g.20gb", 2), ("3g.40gb", 4)]


def test_refusals_name_the_conflict() -> None:
    plan = plan_gpu(state(()), entry({"4g.40gb": 1, "2g.20gb": 2}))
    assert plan.error.startswith("4g.40gb + 2x2g.20gb does not fit on a NVIDIA H100 80GB HBM3")
    assert "needs 8 compute slices; the GPU has 7" in plan.error
    plan = plan_gpu(state(()), entry({"1g.20gb": 1, "2g.20gb": 3}))
    assert plan.error == ""
    plan = plan_gpu(state(()), entry({"3g.40gb": 1, "1g.20gb": 3}))
    assert "needs 10 memory slices" in plan.error or "cannot be placed" in plan.error
    plan = plan_gpu(state(()), entry({"4g.40gb": 1, "1g.20gb": 1, "2g.20gb": 1}))
    assert plan.error == ""
    # A pure placement conflict: compute and memory totals fit, the starts do not.
    plan = plan_gpu(state(()), entry({"4g.40gb": 1, "3g.40gb": 1}))
    assert plan.error == ""
    plan = plan_gpu(state(()), entry({"1g.10gb": 1, "3g.40gb": 2}))
    assert "needs 9 memory slices" in plan.error


def test_on_an_empty_h100_the_totals_decide_and_fragmentation_is_named() -> None:
    """The brute force shows that on an empty H100 counts and compute/memory totals alone decide; placement
    conflicts come from instances already there (fragmentation), and the reason names them."""
    for combo in multisets():
        want = Counter(combo)
        totals_ok = sum(TABLE[n][2] for n in combo) <= 7 and sum(TABLE[n][1] for n in combo) <= 8
        counts_ok = all(v <= TABLE[k][3] for k, v in want.items()) and sum(TABLE[n][4] for n in combo) <= 1
        assert (totals_ok and counts_ok) == (_key(want) in feasible()), combo
    g1, g2 = H100.mig_profile("1g.10gb"), H100.mig_profile("2g.20gb")
    reason = misfit_reason([g2], [(g1, 1), (g1, 3), (g1, 5)], memory_slices=8, compute_slices=7)
    assert reason == (
        "2g.20gb cannot be placed without overlap beside 1g.10gb at 1:1, 1g.10gb at 3:1, 1g.10gb at 5:1 "
        "(2g.20gb only at {0,2,4}:2)"
    )


def test_matching_gpu_gets_no_step() -> None:
    s = state([("3g.40gb", 4), ("2g.20gb", 0), ("2g.20gb", 2)])
    plan = plan_gpu(s, entry({"3g.40gb": 1, "2g.20gb": 2}))
    assert plan.steps == ()
    assert plan.kept == s.instances
    disabled = state((), enabled=False)
    assert plan_gpu(disabled, entry({}, enabled=False)).steps == ()


def test_only_the_difference_is_created_and_destroyed() -> None:
    s = state([("1g.10gb", 0), ("1g.10gb", 1), ("2g.20gb", 2), ("3g.40gb", 4)])
    plan = plan_gpu(s, entry({"1g.10gb": 2, "2g.20gb": 1, "1g.20gb": 1, "3g.40gb": 0}))
    assert [(s.action, s.profile, s.start) for s in plan.steps] == [
        (Action.DESTROY, "3g.40gb", 4),
        (Action.CREATE, "1g.20gb", 4),
    ]
    assert {i.profile for i in plan.kept} == {"1g.10gb", "2g.20gb"}
    assert not plan.rebuild


def test_rebuild_only_when_nothing_can_stay() -> None:
    # 1g.10gb at 1 and 3 block every 4-slice... the target 7g.80gb cannot keep them.
    s = state([("1g.10gb", 1), ("1g.10gb", 3)])
    plan = plan_gpu(s, entry({"7g.80gb": 1}))
    assert [(x.action, x.profile) for x in plan.steps] == [
        (Action.DESTROY, "1g.10gb"),
        (Action.DESTROY, "1g.10gb"),
        (Action.CREATE, "7g.80gb"),
    ]
    assert plan.rebuild and plan.kept == ()
    # Scattered 1g instances that the target keeps in part: the one at 1 blocks a 2g at 0.
    s = state([("1g.10gb", 1), ("1g.10gb", 6)])
    plan = plan_gpu(s, entry({"2g.20gb": 3, "1g.10gb": 1}))
    assert [i.start for i in plan.kept] == [6]
    assert [(x.action, x.start) for x in plan.steps] == [
        (Action.DESTROY, 1),
        (Action.CREATE, 0),
        (Action.CREATE, 2),
        (Action.CREATE, 4),
    ]


def test_mode_changes() -> None:
    off = state((), enabled=False)
    plan = plan_gpu(off, entry({"7g.80gb": 1}))
    assert [s.action for s in plan.steps] == [Action.SET_MODE, Action.RESET, Action.CREATE]
    assert [s.action for s in plan_gpu(off, entry({"7g.80gb": 1}), mode_only=True).steps] == [
        Action.SET_MODE,
        Action.RESET,
    ]
    on = state([("7g.80gb", 0)])
    plan = plan_gpu(on, entry({}, enabled=False))
    assert [s.action for s in plan.steps] == [Action.DESTROY, Action.SET_MODE, Action.RESET]
    assert plan.destructive and plan.mode_change
    # Enabled with no instances wanted: everything destroyed, mode stays.
    plan = plan_gpu(on, entry({}))
    assert [s.action for s in plan.steps] == [Action.DESTROY]


def _max_keep_brute(current: list[tuple[str, int]], want: Counter[str]) -> int:
    """The most current instances any valid final layout with exactly ``want`` can contain."""
    best = -1
    cur = set(current)
    for p in packings():
        if Counter(n for n, _ in p) == want:
            best = max(best, len(cur & p))
    return best


def _random_layout(rng: random.Random) -> list[tuple[str, int]]:
    p = rng.choice(packings())
    return sorted(p)


def test_keeps_as_many_instances_as_the_brute_force_allows() -> None:
    """600 (current, target) pairs drawn with a fixed seed, plus every target against one busy layout."""
    rng = random.Random(7)
    targets = sorted(feasible())
    pairs = [(_random_layout(rng), dict(rng.choice(targets))) for _ in range(600)]
    busy = [("1g.10gb", 0), ("1g.10gb", 1), ("2g.20gb", 2), ("3g.40gb", 4)]
    pairs += [(busy, dict(t)) for t in targets if t]
    for layout, target in pairs:
        if not target:
            continue
        s = state(layout)
        want = Counter(target)
        plan = plan_gpu(s, entry(want))
        assert not plan.error, (layout, target, plan.error)
        _check_layout(plan, s, want)
        assert len(plan.kept) == _max_keep_brute(layout, want), (layout, target)
        destroyed = sum(1 for x in plan.steps if x.action == Action.DESTROY)
        assert destroyed == len(layout) - len(plan.kept)


def test_deterministic() -> None:
    s = state([("1g.10gb", 3), ("1g.20gb", 6)])
    e = entry({"2g.20gb": 2, "1g.10gb": 2})
    assert plan_gpu(s, e) == plan_gpu(s, e)
