"""Tests for the Conditions batch container (no model involved)."""

from __future__ import annotations

import math

import pytest
import torch

from pccd.conditioning import (
    CONDITION_NAMES,
    MAGNETIC_ORDERINGS,
    MAX_ATOMS,
    MAX_SLOTS,
    STABILITY_LABELS,
    STABLE_E_ABOVE_HULL,
    Conditions,
    stability_index,
)


def _batch() -> Conditions:
    return Conditions.from_lists(
        [[26, 8, 3], [8], [14, 6]],
        band_gap=[1.2, None, 0.0],
        magnetic=["FM", None, 0],
        formula=[[2, 8, 4], [3], None],
        stability=["stable", None, 0],
    )


def _same(a: Conditions, b: Conditions) -> bool:
    """Field-wise equality that treats NaN == NaN."""
    return (
        torch.equal(a.elements, b.elements)
        and torch.equal(torch.isnan(a.band_gap), torch.isnan(b.band_gap))
        and torch.equal(a.band_gap.nan_to_num(-7.0), b.band_gap.nan_to_num(-7.0))
        and torch.equal(a.magnetic, b.magnetic)
        and torch.equal(a.formula, b.formula)
        and torch.equal(a.elements_dropped, b.elements_dropped)
        and torch.equal(a.stability, b.stability)
    )


def _all_null(c: Conditions) -> bool:
    return all(bool(mask.all()) for mask in c.missing().values())


def test_constants():
    assert MAGNETIC_ORDERINGS == ("NM", "FM", "AFM", "FiM")
    assert MAX_SLOTS == 3
    assert MAX_ATOMS == 16
    assert STABILITY_LABELS == ("unstable", "stable")
    assert STABLE_E_ABOVE_HULL == 0.08
    # appended last: the drop draws of the four older conditions keep their order
    assert CONDITION_NAMES == ("elements", "band_gap", "magnetic", "formula", "stability")


@pytest.mark.parametrize(
    ("e_above_hull", "label"),
    [
        (0.0, 1),
        (0.079, 1),
        (0.08, 0),
        (0.0800001, 0),
        (2.5, 0),
        (-0.01, 1),  # below the hull (a new ground state): stable
        (math.nan, -1),
        (float("nan"), -1),
        (None, -1),
    ],
)
def test_stability_index_thresholds(e_above_hull, label):
    assert stability_index(e_above_hull) == label


def test_from_lists_sorts_by_z_and_permutes_formula():
    c = _batch()
    assert c.elements.tolist() == [[3, 8, 26], [8, 0, 0], [6, 14, 0]]
    # Li4 O8 Fe2 given in the order Fe, O, Li → counts follow their elements.
    assert c.formula.tolist() == [[4, 8, 2], [3, 0, 0], [-1, -1, -1]]
    assert c.formula_missing.tolist() == [False, False, True]
    assert c.elements.dtype == torch.long and c.formula.dtype == torch.long
    assert c.band_gap.dtype == torch.float32
    assert c.band_gap[0].item() == pytest.approx(1.2)
    assert math.isnan(c.band_gap[1].item())
    assert c.magnetic.tolist() == [1, -1, 0]
    assert c.stability.tolist() == [1, -1, 0] and c.stability.dtype == torch.long
    assert c.stability_missing.tolist() == [False, True, False]
    assert c.elements_dropped.tolist() == [False, False, False]
    assert c.batch_size == len(c) == 3
    c.validate()


def test_from_lists_broadcasts_and_missing_elements():
    c = Conditions.from_lists([[8, 1], None, []], band_gap=2.0, magnetic="afm", stability="Stable")
    assert c.band_gap.tolist() == [2.0, 2.0, 2.0]
    assert c.magnetic.tolist() == [2, 2, 2]
    assert c.stability.tolist() == [1, 1, 1]
    assert Conditions.from_lists([[8]] * 2, stability=" UNSTABLE ").stability.tolist() == [0, 0]
    assert Conditions.from_lists([[8]] * 2).stability_missing.all()  # not given: missing
    assert c.elements_dropped.tolist() == [False, True, True]
    assert c.elements[1].tolist() == [0, 0, 0]
    assert c.formula_missing.all()
    c.validate()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"elements": [[0, 8]]}, "atomic numbers"),
        ({"elements": [[119]]}, "atomic numbers"),
        ({"elements": [[1, 2, 3, 4]]}, "at most 3 elements"),
        ({"elements": [[8, 8]]}, "distinct"),
        ({"elements": [[8, 26]], "formula": [[0, 2]]}, "atom counts"),
        ({"elements": [[8, 26]], "formula": [[17, 1]]}, "atom counts"),
        ({"elements": [[8, 26]], "formula": [[9, 8]]}, "at most 16 atoms"),
        ({"elements": [[8, 26]], "formula": [[2]]}, "1 counts for 2 elements"),
        ({"elements": [[8], [9]], "formula": [[2]]}, "formula has 1 entries"),
        ({"elements": [None], "formula": [[2]]}, "needs the elements"),
        ({"elements": [[8]], "magnetic": ["ferro"]}, "unknown magnetic ordering"),
        ({"elements": [[8]], "magnetic": [4]}, "magnetic index"),
        ({"elements": [[8]], "stability": ["metastable"]}, "unknown stability"),
        ({"elements": [[8]], "stability": [2]}, "stability index"),
        ({"elements": [[8]], "stability": [-2]}, "stability index"),
        ({"elements": [[8], [9]], "stability": ["stable"]}, "stability has 1 entries"),
        ({"elements": [[8]], "band_gap": [-0.5]}, "band gap"),
        ({"elements": [[8]], "band_gap": [1.0, 2.0]}, "band_gap has 2 entries"),
    ],
)
def test_from_lists_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Conditions.from_lists(**kwargs)


def test_constructor_checks_shapes_and_validate_checks_values():
    c = _batch()
    with pytest.raises(ValueError, match="shape"):
        Conditions(c.elements[:, :2], c.band_gap, c.magnetic, c.formula, c.elements_dropped)
    with pytest.raises(ValueError, match="dtype"):
        Conditions(c.elements.float(), c.band_gap, c.magnetic, c.formula, c.elements_dropped)
    unsorted = Conditions(
        torch.tensor([[26, 8, 0]]),
        torch.tensor([1.0]),
        torch.tensor([0]),
        torch.tensor([[-1, -1, -1]]),
        torch.tensor([False]),
    )
    with pytest.raises(ValueError, match="ascending"):
        unsorted.validate()
    bad_formula = Conditions(
        torch.tensor([[8, 26, 0]]),
        torch.tensor([1.0]),
        torch.tensor([0]),
        torch.tensor([[2, 0, 0]]),
        torch.tensor([False]),
    )
    with pytest.raises(ValueError, match="formula counts"):
        bad_formula.validate()
    # stability is optional in the constructor (code written before it existed): all missing
    assert bad_formula.stability.tolist() == [-1] and bad_formula.stability_missing.all()
    with pytest.raises(ValueError, match="stability"):
        Conditions(c.elements, c.band_gap, c.magnetic, c.formula, c.elements_dropped, c.band_gap)
    bad_stability = Conditions(
        c.elements, c.band_gap, c.magnetic, c.formula, c.elements_dropped, torch.tensor([1, 2, -1])
    )
    with pytest.raises(ValueError, match="stability must be"):
        bad_stability.validate()


def test_drop_probability_one_gives_all_null_and_zero_keeps():
    c = _batch()
    gen = torch.Generator().manual_seed(0)
    all_dropped = c.drop(dict.fromkeys(CONDITION_NAMES, 1.0), gen)
    assert _all_null(all_dropped)
    unchanged = c.drop(dict.fromkeys(CONDITION_NAMES, 0.0), gen)
    assert _same(unchanged, c)
    # the original is not modified
    assert _same(c, _batch())


def test_drop_is_per_condition_independent_and_seeded():
    c = Conditions.from_lists(
        [[8, 26]] * 2000, band_gap=1.0, magnetic="FM", formula=[[3, 2]] * 2000, stability=1
    )
    probs = dict.fromkeys(CONDITION_NAMES, 0.5)
    a = c.drop(probs, torch.Generator().manual_seed(1))
    b = c.drop(dict(reversed(probs.items())), torch.Generator().manual_seed(1))
    assert _same(a, b)  # dict order does not change the draws
    masks = a.missing()
    for mask in masks.values():
        assert 0.4 < mask.float().mean().item() < 0.6
    # independent: masks of different conditions are not identical
    assert not torch.equal(masks["elements"], masks["band_gap"])
    assert not torch.equal(masks["magnetic"], masks["formula"])
    assert not torch.equal(masks["formula"], masks["stability"])
    # only the named condition is touched
    only_gap = c.drop({"band_gap": 1.0})
    assert only_gap.band_gap_missing.all()
    assert not only_gap.elements_dropped.any() and not only_gap.formula_missing.any()
    with pytest.raises(ValueError, match="unknown condition"):
        c.drop({"spacegroup": 0.1})


def test_drop_of_stability_and_the_older_draws_unchanged():
    c = Conditions.from_lists(
        [[8, 26]] * 2000, band_gap=1.0, magnetic="FM", formula=[[3, 2]] * 2000, stability="stable"
    )
    old = {"elements": 0.1, "band_gap": 0.2, "magnetic": 0.2, "formula": 0.5}
    a = c.drop(old, torch.Generator().manual_seed(5))
    b = c.drop({**old, "stability": 0.2}, torch.Generator().manual_seed(5))
    # stability is drawn after the four older conditions: their masks are the same
    for name in old:
        assert torch.equal(a.missing()[name], b.missing()[name]), name
    assert not a.stability_missing.any()  # not named: never dropped
    share = b.stability_missing.float().mean().item()
    assert 0.15 < share < 0.25
    assert torch.equal(b.stability[~b.stability_missing], c.stability[~b.stability_missing])
    only = c.drop({"stability": 1.0})
    assert only.stability_missing.all() and not only.band_gap_missing.any()
    assert not c.stability_missing.any()  # the original is not modified


def test_without_nulls_only_the_named_conditions_everywhere():
    c = Conditions.from_lists([[8, 26]] * 3, band_gap=2.0, magnetic="FM", formula=[[3, 2]] * 3)
    gap_only = c.without(["band_gap"])
    assert gap_only.band_gap_missing.all()
    assert not gap_only.elements_dropped.any() and not gap_only.formula_missing.any()
    assert not gap_only.magnetic_missing.any() and torch.equal(gap_only.elements, c.elements)
    s = Conditions.from_lists([[8, 26]] * 3, band_gap=2.0, stability="unstable")
    no_stability = s.without(["stability"])
    assert no_stability.stability.tolist() == [-1, -1, -1]
    assert not no_stability.band_gap_missing.any()
    assert s.without(["band_gap"]).stability.tolist() == [0, 0, 0]
    assert _all_null(c.without(CONDITION_NAMES))
    assert not c.band_gap_missing.any()  # the original is not modified
    with pytest.raises(ValueError, match="unknown condition"):
        c.without(["spacegroup"])


def test_null_like_and_unconditional():
    c = _batch()
    n = c.null_like()
    assert n.batch_size == c.batch_size and n.device == c.device
    assert _all_null(n)
    assert _all_null(Conditions.unconditional(4))


def test_index_cat_to_repeat():
    c = _batch()
    one = c[1]
    assert one.batch_size == 1 and one.elements.tolist() == [[8, 0, 0]]
    assert c[-1].elements.tolist() == [[6, 14, 0]]
    picked = c.index(torch.tensor([2, 0]))
    assert picked.elements.tolist() == [[6, 14, 0], [3, 8, 26]]
    assert c.index([0, 2]).magnetic.tolist() == [1, 0]
    assert c.index([True, False, True]).magnetic.tolist() == [1, 0]
    assert c.index([0, 2]).stability.tolist() == [1, 0]
    assert c.repeat_interleave(2).stability.tolist() == [1, 1, -1, -1, 0, 0]
    assert c[c.formula_missing].elements.tolist() == [[6, 14, 0]]
    assert c[0:2].batch_size == 2
    joined = Conditions.cat([c[0], c[1:]])
    assert _same(joined, c)
    assert _same(c.to("cpu"), c)
    rep = c.repeat_interleave(2)
    assert rep.batch_size == 6 and rep.elements[1].tolist() == [3, 8, 26]
    with pytest.raises(ValueError):
        Conditions.cat([])
