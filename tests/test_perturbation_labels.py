"""Perturbation labels: grammar, canonical form, errors, and the GEARS simulation split."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from opencellplm.data import (
    SPLIT_GROUPS,
    GenePerturbation,
    PerturbationLabelError,
    gears_split,
    parse_labels,
    parse_perturbation,
    perturbation_genes,
    perturbation_label,
)
from opencellplm.data.labels import label_values

EXPECTED = r'expected "ctrl" or genes joined by "\+", each optionally suffixed ":down" or ":up"'


def down(gene: str) -> GenePerturbation:
    return GenePerturbation(gene, "down")


def up(gene: str) -> GenePerturbation:
    return GenePerturbation(gene, "up")


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        ("ctrl", ()),
        (" ctrl ", ()),
        ("ctrl+ctrl", ()),
        ("KLF1", (down("KLF1"),)),
        ("KLF1+ctrl", (down("KLF1"),)),
        ("ctrl+KLF1", (down("KLF1"),)),
        ("B+A", (down("A"), down("B"))),
        ("A+B", (down("A"), down("B"))),
        (" MAP2K6 : up + KLF1 ", (down("KLF1"), up("MAP2K6"))),
        ("KLF1:down+MAP2K6:up", (down("KLF1"), up("MAP2K6"))),
    ],
)
def test_parse(label, expected):
    assert parse_perturbation(label) == expected


def test_default_direction_and_custom_control():
    assert parse_perturbation("A+B:down", default_direction="up") == (up("A"), down("B"))
    assert parse_perturbation("NT", control="NT") == ()
    assert parse_perturbation("A+NT", control="NT") == (down("A"),)
    with pytest.raises(PerturbationLabelError, match=r'expected "NT" or genes'):
        parse_perturbation("A++B", control="NT")


@pytest.mark.parametrize(
    ("label", "reason"),
    [
        ("", r"label '' is empty"),
        ("   ", r"label '   ' is empty"),
        ("A++B", r"label 'A\+\+B' has an empty token"),
        ("+A", r"label '\+A' has an empty token"),
        ("A+", r"label 'A\+' has an empty token"),
        (":up", r"label ':up' has a token without a gene"),
        ("A:sideways", r"label 'A:sideways' has an unknown suffix ':sideways'"),
        ("A:", r"label 'A:' has an unknown suffix ':'"),
        ("A+A", r"label 'A\+A' names gene 'A' twice"),
        ("A:up+A", r"label 'A:up\+A' names gene 'A' twice"),
        (float("nan"), r"label nan is not a string \(type float\)"),
        (None, r"label None is not a string \(type NoneType\)"),
        (3, r"label 3 is not a string \(type int\)"),
        ("nan", r"label 'nan' is the text of a missing value, not a perturbation"),
        (" None ", r"label ' None ' is the text of a missing value"),
        ("<NA>", r"label '<NA>' is the text of a missing value"),
    ],
)
def test_bad_labels_are_refused_with_the_expected_form(label, reason):
    with pytest.raises(PerturbationLabelError, match=reason) as info:
        parse_perturbation(label)
    assert isinstance(info.value, ValueError)
    assert pytest.raises(PerturbationLabelError, parse_perturbation, label).match(EXPECTED)


def test_bad_options():
    with pytest.raises(ValueError, match="default_direction must be 'down' or 'up'"):
        parse_perturbation("A", default_direction="sideways")
    with pytest.raises(ValueError, match="control must be a non-empty string without"):
        parse_perturbation("A", control="c+d")


def test_canonical_round_trip():
    for label in ["B+A:up", "A", "ctrl", "Z:up", "C+B+A"]:
        genes = parse_perturbation(label)
        canonical = perturbation_label(genes)
        assert parse_perturbation(canonical) == genes
        assert perturbation_label(parse_perturbation(canonical)) == canonical
    assert perturbation_label([up("B"), down("A")]) == "A+B:up"
    assert perturbation_label([]) == "ctrl"
    assert perturbation_label([], control="NT") == "NT"


def test_perturbation_label_refuses_what_cannot_be_parsed_back():
    with pytest.raises(ValueError, match="cannot be written in a label"):
        perturbation_label([down("A+B")])
    with pytest.raises(ValueError, match="cannot be written in a label"):
        perturbation_label([down("ctrl")])
    with pytest.raises(ValueError, match="a gene appears twice"):
        perturbation_label([down("A"), up("A")])
    with pytest.raises(ValueError, match="expected GenePerturbation entries"):
        perturbation_label(["A"])
    with pytest.raises(ValueError, match="direction must be 'down' or 'up'"):
        GenePerturbation("A", "sideways")


def test_parse_labels_unique_and_inputs():
    cells = pd.Series(["ctrl", "A", "A+B", "A", "B+A:up", "ctrl"], dtype="category")
    parsed = parse_labels(cells)
    assert list(parsed) == ["ctrl", "A", "A+B", "B+A:up"]
    assert parsed["B+A:up"] == (up("A"), down("B"))
    assert parse_labels(np.array(["A", "A"])) == {"A": (down("A"),)}
    assert perturbation_genes(parsed) == ["A", "B"]


def test_parse_labels_collects_every_bad_label():
    labels = ["A", "A++B", "x:y", "C+C", "", float("nan"), "D+", "+E", "ok", "A++B"]
    with pytest.raises(PerturbationLabelError) as info:
        parse_labels(labels)
    message = str(info.value)
    assert message.startswith("7 bad perturbation label(s) (showing 5): label 'A++B' has an empty token")
    assert "'D+'" not in message and "'+E'" not in message  # only 5 shown
    assert message.count("'A++B'") == 1  # repeats are reported once
    assert pytest.raises(PerturbationLabelError, parse_labels, labels).match(EXPECTED)
    with pytest.raises(ValueError, match="labels must be a collection of labels, got the string 'A'"):
        parse_labels("A")


def test_missing_labels_of_a_column_are_masked_never_parsed():
    for column in (
        pd.Series(["ctrl", np.nan, "A", None, "", " ", "nan", "A"], dtype="category"),
        pd.Series(["ctrl", np.nan, "A", None, "", " ", "nan", "A"], dtype=object),
        pd.Series(["ctrl", pd.NA, "A", None, "", " ", "NaN", "A"], dtype="string"),
    ):
        values, missing = label_values(column)
        assert missing.tolist() == [False, True, False, True, True, True, True, False]
        assert values.tolist() == ["ctrl", "", "A", "", "", "", "", "A"]
        assert parse_labels(values[~missing]) == {"ctrl": (), "A": (down("A"),)}
    values, missing = label_values(pd.Series([1, 2.0, np.nan]))
    assert values.tolist() == ["1.0", "2.0", ""] and missing.tolist() == [False, False, True]


# --- the GEARS split -----------------------------------------------------------------------------------------------


def toy_parsed():
    singles = [f"S{i}" for i in range(12)]
    labels = ["ctrl", *singles]
    labels += [f"S{i}+S{i + 1}" for i in range(0, 10, 2)]  # both genes alone
    labels += [f"S{i}+X{i}" for i in range(4)]  # one gene alone (X never alone)
    labels += ["X0+X1", "X2+X3"]  # neither
    return parse_labels(labels)


def test_gears_split_groups_are_right_and_disjoint():
    parsed = toy_parsed()
    split = gears_split(parsed, seed=3)
    assert split.control == ["ctrl"]
    assert not set(split.train) & set(split.test)
    assert set(split.train) | set(split.test) | {"ctrl"} == set(parsed)
    assert set(split.groups) == set(split.test) and set(split.groups.values()) <= set(SPLIT_GROUPS)
    trained_alone = {parsed[label][0] for label in split.train if len(parsed[label]) == 1}
    for label, group in split.groups.items():
        genes = parsed[label]
        if len(genes) == 1:
            assert group == "single_unseen"
        else:
            assert group == f"combo_seen{sum(g in trained_alone for g in genes)}"
    assert all(sum(g in trained_alone for g in parsed[label]) == 2 for label in split.train if len(parsed[label]) == 2)
    # an unseen gene appears in no training label at all
    unseen = {g for label in split.test for g in parsed[label]} - trained_alone
    assert not unseen & {g for label in split.train for g in parsed[label]}
    sizes = split.group_sizes()
    assert sizes["single_unseen"] == 3  # round(0.25 * 12)
    assert all(sizes[g] >= 1 for g in SPLIT_GROUPS)


def test_gears_split_is_seeded():
    parsed = toy_parsed()
    assert gears_split(parsed, seed=1) == gears_split(parsed, seed=1)
    tests = {tuple(gears_split(parsed, seed=s).test) for s in range(6)}
    assert len(tests) > 1


def test_gears_split_direction_matters():
    parsed = parse_labels(["A:up", "B", "C", "D", "A+B"])
    for seed in range(5):
        split = gears_split(parsed, seed=seed)
        if "A+B" in split.groups:
            assert split.groups["A+B"] in ("combo_seen0", "combo_seen1")  # A (down) is never trained alone


def test_gears_split_errors():
    with pytest.raises(ValueError, match=r"test_fraction must lie in \(0, 1\)"):
        gears_split(toy_parsed(), test_fraction=1.0)
    with pytest.raises(ValueError, match=r"combo_seen2_test_fraction must lie in \[0, 1\)"):
        gears_split(toy_parsed(), combo_seen2_test_fraction=-0.1)
    with pytest.raises(ValueError, match=r"perturb more than 2 genes: \['A\+B\+C'\]"):
        gears_split(parse_labels(["A", "B", "A+B+C"]))
    with pytest.raises(ValueError, match="needs single-gene labels"):
        gears_split(parse_labels(["ctrl", "A+B"]))
