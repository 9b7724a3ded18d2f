"""The simulated Perturb-seq experiment: determinism, layout, ground truth."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from opencellplm.data import gears_split, parse_labels, parse_perturbation
from opencellplm.datasets import simulate_perturbseq

SMALL = dict(n_genes=120, n_regulators=20, n_single=12, n_combo=10, cells_per_perturbation=20, n_control=60)


@pytest.fixture(scope="module")
def simulated():
    return simulate_perturbseq(**SMALL, seed=1, return_truth=True)


def test_seeded_determinism():
    a = simulate_perturbseq(**SMALL, seed=5)
    b = simulate_perturbseq(**SMALL, seed=5)
    c = simulate_perturbseq(**SMALL, seed=6)
    assert (a.X != b.X).nnz == 0 and a.obs.equals(b.obs) and a.var.equals(b.var)
    assert (a.X != c.X).nnz > 0


def test_layout(simulated):
    adata, truth = simulated
    n_conditions = 1 + SMALL["n_single"] + SMALL["n_combo"]
    assert adata.n_obs == SMALL["n_control"] + (n_conditions - 1) * SMALL["cells_per_perturbation"]
    assert adata.n_vars == SMALL["n_genes"] and adata.var_names[0] == "G0001"
    assert isinstance(adata.X, sp.csr_matrix) and adata.X.dtype == np.float32
    assert np.all(adata.X.data == np.rint(adata.X.data)) and adata.X.data.min() > 0
    obs = adata.obs
    assert isinstance(obs["perturbation"].dtype, pd.CategoricalDtype)
    counts = obs["perturbation"].value_counts()
    assert counts["ctrl"] == SMALL["n_control"] and len(counts) == n_conditions
    parsed = parse_labels(obs["perturbation"])
    for label, genes in parsed.items():
        assert label == "+".join(g.gene for g in genes) or label == "ctrl"  # canonical, all knock-downs
        assert set(obs.loc[obs["perturbation"] == label, "n_genes_perturbed"]) == {len(genes)}
    assert sorted(truth.index) == sorted(parsed) and list(truth.columns) == list(adata.var_names)
    np.testing.assert_allclose(truth.sum(axis=1), 1.0)
    info = adata.uns["simulation"]
    assert info["simulated"] is True and info["seed"] == 1 and "SIMULATED" in info["description"]
    assert info["n_single"] == SMALL["n_single"] and info["direction"] == "down"
    design = info["combo_design"]
    assert all(len(design[k]) >= 1 for k in ("both_alone", "one_alone", "neither_alone"))
    split = gears_split(parsed, seed=0)
    assert all(n >= 1 for n in split.group_sizes().values())
    assert adata.var["regulator"].sum() == SMALL["n_regulators"]
    assert adata.var["perturbed"].sum() == len({g.gene for genes in parsed.values() for g in genes})


def test_h5ad_round_trip(simulated, tmp_path):
    import anndata as ad

    adata, _ = simulated
    adata.write_h5ad(tmp_path / "sim.h5ad")
    back = ad.read_h5ad(tmp_path / "sim.h5ad")
    assert back.uns["simulation"]["simulated"] and len(back.uns["simulation"]["network"]["weight"]) > 0


def test_knock_down_lowers_the_gene_and_moves_its_targets(simulated):
    adata, truth = simulated
    network = adata.uns["simulation"]["network"]
    log = np.log1p(truth * 1e4)
    change = log - log.loc["ctrl"]
    regulator_singles = [g for g in truth.index if g in set(network["regulator"])]
    assert regulator_singles
    for gene in regulator_singles:
        assert change.loc[gene, gene] < -1.0  # to 10-20% of its activity
        targets = network["target"][network["regulator"] == gene]
        assert np.abs(change.loc[gene, targets]).max() > 0.05
    # measured counts agree: the perturbed gene's share falls in its cells
    x = adata.X.toarray()
    share = x / x.sum(axis=1, keepdims=True)
    gene = regulator_singles[0]
    column = adata.var_names.get_loc(gene)
    cells = (adata.obs["perturbation"] == gene).to_numpy()
    control = (adata.obs["perturbation"] == "ctrl").to_numpy()
    assert share[cells, column].mean() < 0.5 * share[control, column].mean()


def test_combinations_are_not_always_additive():
    adata, truth = simulate_perturbseq(**SMALL | {"n_combo": 20, "n_single": 16}, seed=2, return_truth=True)
    log = np.log1p(truth * 1e4)
    change = log - log.loc["ctrl"]
    gaps = []
    for label in adata.uns["simulation"]["combo_design"]["both_alone"]:
        a, b = label.split("+")
        gaps.append(float(np.abs(change.loc[label] - change.loc[a] - change.loc[b]).max()))
    assert max(gaps) > 0.1


def test_activation_and_mixed_directions():
    adata, truth = simulate_perturbseq(**SMALL, direction="up", seed=3, return_truth=True)
    singles = [label for label in truth.index if label.count(":up") == 1 and "+" not in label]
    assert len(singles) == SMALL["n_single"]
    change = np.log1p(truth * 1e4) - np.log1p(truth.loc["ctrl"] * 1e4)
    assert all(change.loc[s, s.removesuffix(":up")] > 0.5 for s in singles)
    mixed = simulate_perturbseq(**SMALL, direction="mixed", seed=3)
    directions = {g.direction for label in mixed.obs["perturbation"].cat.categories for g in parse_perturbation(label)}
    assert directions == {"down", "up"}


def test_given_gene_names():
    names = [f"ENSG{i:011d}" for i in range(SMALL["n_genes"])]
    adata = simulate_perturbseq(**SMALL, gene_names=names)
    assert list(adata.var_names) == names
    assert all(g.gene in names for label in adata.obs["perturbation"].cat.categories for g in parse_perturbation(label))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"gene_names": ["A"] * 3}, r"gene_names has 3 names but n_genes is 120"),
        ({"gene_names": ["A"] * 119 + ["B"]}, r"gene_names must be unique; repeated: \['A'\]"),
        ({"gene_names": [f"G{i}" for i in range(119)] + ["X+Y"]}, r"cannot appear in perturbation labels"),
        ({"gene_names": [f"G{i}" for i in range(119)] + ["ctrl"]}, r"cannot appear in perturbation labels"),
        ({"direction": "sideways"}, r"direction must be 'down', 'up' or 'mixed'"),
        ({"n_single": 0}, r"n_single must be an integer >= 1, got 0"),
        ({"n_regulators": 119}, r"n_regulators must be at most n_genes - 3 = 117"),
        ({"knockdown": (0.5, 1.5)}, r"knockdown must be a range \(low, high\) with 0 < low <= high < 1"),
        ({"activation": (0.5, 2)}, r"activation must be a range \(low, high\) with 1 < low <= high"),
        ({"activation": "big"}, r"activation must be a pair of numbers"),
        ({"theta": -1.0}, r"theta must be a positive number"),
        ({"n_combo": 150}, r"asks for .* combinations with both genes alone but the perturbed genes allow only"),
        ({"n_single": 118}, r"perturbed genes are needed .* only n_genes=120"),
    ],
)
def test_bad_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        simulate_perturbseq(**SMALL | kwargs)
