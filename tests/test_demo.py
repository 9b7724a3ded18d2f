"""opencellplm demo: the report, the pictures and results.json on synthetic cells with a tiny model, the folder
written only where that loses nothing, and the command line."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import torch

from opencellplm import CellPLM, demo
from opencellplm.cli import main
from opencellplm.testing import synthetic_adata

from .conftest import small_model

GENES = [f"GENE{i}" for i in range(60)]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def tiny() -> CellPLM:
    return small_model(GENES, source={"name": "tiny-test-model"})


@pytest.fixture
def cells() -> ad.AnnData:
    return synthetic_adata(200, 60, n_types=3, seed=0)


def _run(out: Path, tiny: CellPLM, cells: ad.AnnData, **kwargs) -> Path:
    return demo.run_demo(out, model=tiny, adata=cells, annotation_steps=4, **kwargs)


def test_demo_writes_report_pictures_and_results_and_replaces_only_its_own_folder(tmp_path, tiny, cells):
    out = tmp_path / "demo"
    before = cells.copy()
    state = torch.random.get_rng_state()
    report = _run(out, tiny, cells)
    assert report == out / "report.md"
    assert sorted(p.name for p in out.iterdir()) == sorted(demo.DEMO_FILES)

    text = report.read_text()
    for name in ("tiny-test-model (pretrained)", "tiny-test-model architecture, untrained", "PCA ("):
        assert f"| {name}" in text  # a row of the clustering table
    for method in ("cellplm", "celltypist_style", "l1_logistic_cv", "knn_on_pca"):
        assert f"| `{method}` |" in text  # a row of the annotation table
    assert "| method (inductive) | macro F1 |" in text and "**40 test cells**" in text  # 20% of 200
    assert "## Where CellPLM wins and where it loses" in text
    assert "Ground truth: `obs['cell_type']` of the given cells." in text
    assert "mean ± sd over 3 seeded splits (seeds [0, 1, 2])" in text
    for picture in demo.PICTURES.values():
        assert f"]({picture})" in text
        data = (out / picture).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000

    results = json.loads((out / "results.json").read_text())
    assert results["format"] == demo.FORMAT and results["seed"] == 0
    assert [a["mode"] for a in results["annotation"]] == ["inductive"] * 3
    assert [a["n_test"] for a in results["annotation"]] == [40] * 3
    assert [s["n_train"] for s in results["annotation_splits"]] == [160] * 3
    assert [s["seed"] for s in results["annotation_splits"]] == [0, 1, 2]
    assert set(results["annotation"][0]["methods"]) == {"cellplm", "celltypist_style", "l1_logistic_cv", "knn_on_pca"}
    assert results["annotation_summary"]["knn_on_pca"]["predict_seconds"]["mean"] >= 0  # timed apart from the fit
    assert "| `knn_on_pca` |" in text and "— ± —" not in text
    f1 = results["annotation_summary"]["cellplm"]["macro_f1"]
    assert len(f1["values"]) == 3 and f1["mean"] == pytest.approx(np.mean(f1["values"]))
    assert f1["sd"] == pytest.approx(np.std(f1["values"], ddof=1))
    # pretrained, five untrained initialisations, PCA
    assert len(results["clustering"]["scores"]) == 7 and results["clustering"]["settings"]["seeds"] == [0, 1, 2]
    assert results["seeds"]["untrained_weights"] == [f"torch.manual_seed({i})" for i in range(5)]
    assert results["model"]["n_genes_matched"] == 60 and results["model"]["n_cells_left_out"] == 0
    assert results["model"]["name"] == "tiny-test-model" and results["data"]["label_counts"]["type_0"] > 0
    assert set(results["timings_seconds"]) >= {"data", "embed", "cluster", "denoise", "annotate", "pictures"}
    # clustering against the untrained model and PCA; denoising against the untrained model, kNN smoothing and the
    # mean profile; annotation against each baseline
    assert [(c["task"], c["theirs"]) for c in results["verdict"]][:5] == [
        ("clustering", "tiny-test-model architecture, untrained (random weights, seed 0)"),
        ("clustering", results["representations"]["pca"]),
        ("denoising", "cellplm_untrained"),
        ("denoising", "knn_smoothing"),
        ("denoising", "mean_profile"),
    ]
    assert len(results["verdict"]) == 2 + 3 + 3
    lines = demo.verdict_lines(results)
    assert sum(map(len, lines.values())) == sum(bool(c[k]) for c in results["verdict"] for k in lines)
    # the caller's data and torch generator are untouched
    assert "X_cellplm" not in cells.obsm and (cells.X != before.X).nnz == 0
    assert torch.equal(torch.random.get_rng_state(), state)

    with pytest.raises(FileExistsError, match="overwrite"):
        _run(out, tiny, cells)
    _run(out, tiny, cells, seed=1, overwrite=True)
    assert json.loads((out / "results.json").read_text())["seed"] == 1
    assert sorted(p.name for p in out.iterdir()) == sorted(demo.DEMO_FILES)

    (out / "notes.txt").write_text("mine")  # a demo folder that now holds another file is never replaced
    with pytest.raises(FileExistsError, match="not a demo folder written by opencellplm"):
        _run(out, tiny, cells, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"


def test_zero_shot_denoising_is_compared_with_the_untrained_architecture_over_its_initialisations(
    tmp_path, tiny, cells
):
    report = _run(tmp_path / "demo", tiny, cells)
    results = json.loads((tmp_path / "demo" / "results.json").read_text())
    denoising = results["denoising"]
    assert denoising["protocol"] == "hidden" and denoising["fraction"] == 0.1 and denoising["n_genes"] == 60
    assert [c["seed"] for c in denoising["corruptions"]] == results["seeds"]["denoising_corruptions"] == [0, 1, 2]
    for corruption in denoising["corruptions"]:
        methods = [m["method"] for m in corruption["pretrained"]["methods"]]
        assert methods == ["cellplm_zero_shot", "knn_smoothing", "mean_profile"]
        assert corruption["pretrained"]["seed"] == corruption["seed"]  # each corruption has its own matrix
        untrained = corruption["untrained"]
        assert [u["weights_seed"] for u in untrained] == [0, 1, 2, 3, 4]
        assert {u["scores"]["n_hidden"] for u in untrained} == {
            corruption["pretrained"]["methods"][0]["scores"]["n_hidden"]
        }
        assert len({u["scores"]["rmse"] for u in untrained}) == 5  # five different networks

    summary = results["denoising_summary"]
    assert list(summary) == ["cellplm_zero_shot", "cellplm_untrained", "knn_smoothing", "mean_profile"]
    rmse = summary["cellplm_untrained"]["rmse"]
    values = [u["scores"]["rmse"] for c in denoising["corruptions"] for u in c["untrained"]]
    assert rmse["values"] == values and len(values) == 5 * 3
    assert rmse["mean"] == pytest.approx(np.mean(values)) and rmse["sd"] == pytest.approx(np.std(values, ddof=1))
    assert len(summary["knn_smoothing"]["pearson"]["values"]) == 3

    text = report.read_text()
    table = text.split("## Zero-shot denoising", 1)[1].split("## ", 1)[0]
    assert "| method (zero-shot) | RMSE | MAE | Pearson r | sd over |" in table
    row = "| tiny-test-model architecture, untrained (random weights), zero-shot |"
    assert f"{row} {rmse['mean']:.3f} ± {rmse['sd']:.3f} |" in table
    assert "| 5 initialisations × 3 corruptions |" in table
    assert "| `knn_smoothing` |" in table and "| `mean_profile` |" in table
    assert "zero-shot denoising: mean over 3 seeded corruptions" in text

    (against_untrained,) = [
        c for c in results["verdict"] if c["task"] == "denoising" and c["theirs"] == "cellplm_untrained"
    ]
    assert against_untrained["spread"] == "3 corruption seeds; 5 random initialisations of the untrained architecture"
    compared = against_untrained["wins"] + against_untrained["losses"] + against_untrained["ties"]
    assert {c["figure"]: c["n_theirs"] for c in compared} == {"RMSE": 15, "MAE": 15, "Pearson r": 15}
    lines = demo.verdict_lines(results)
    said = [line for kind in lines.values() for line in kind if "(denoising)" in line and "untrained" in line]
    assert said and all("tiny-test-model" in line and "architecture" in line for line in said)
    assert any(line in text for line in said)


def test_a_folder_the_demo_did_not_write_is_never_replaced(tmp_path, tiny, cells):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "results.json").write_text('{"format": "something else"}')
    with pytest.raises(FileExistsError, match="not a demo folder"):
        _run(folder, tiny, cells, overwrite=True)
    assert (folder / "results.json").read_text() == '{"format": "something else"}'
    assert [p.name for p in tmp_path.iterdir()] == ["mine"]  # no partial folder left


def test_bad_input_is_refused_before_any_work(tmp_path, tiny, cells):
    with pytest.raises(KeyError, match="'nope' not found"):
        demo.run_demo(tmp_path / "a", model=tiny, adata=cells, labels_key="nope")
    cells.obs["one"] = "x"
    with pytest.raises(ValueError, match="at least two"):
        demo.run_demo(tmp_path / "b", model=tiny, adata=cells, labels_key="one")
    with pytest.raises(ValueError, match="annotation_steps"):
        demo.run_demo(tmp_path / "c", model=tiny, adata=cells, annotation_steps=0)
    assert not any(tmp_path.iterdir())


def test_split_is_stratified_seeded_and_keeps_single_cell_types_in_training():
    import pandas as pd

    labels = pd.Series(["a"] * 50 + ["b"] * 30 + ["c"] * 19 + ["d"] + [None] * 5)
    test, info = demo._split(labels, seed=3)
    again, _ = demo._split(labels, seed=3)
    np.testing.assert_array_equal(test, again)
    held = labels[test].value_counts().to_dict()
    assert held == {"a": 10, "b": 6, "c": 4}  # 20% of each type
    assert info["kept_in_training_single_cell_types"] == ["d"] and info["n_unlabelled_left_out"] == 5
    assert info["n_test"] == 20 and info["n_train"] == 80
    assert not test[labels.isna().to_numpy()].any()


def test_cli_demo(tmp_path, monkeypatch, capsys):
    calls = []

    def fake_run_demo(out, *, overwrite, seed):
        calls.append((out, overwrite, seed))
        folder = Path(out).resolve()
        folder.mkdir()
        verdict = [
            {"task": "clustering", "model": "m", "other": "PCA", "wins": [], "ties": [], "losses": [
                {"figure": "best ARI", "difference": -0.26}]},
        ]  # fmt: skip
        data = {"ground_truth": "the labels"}
        (folder / "results.json").write_text(json.dumps({"format": demo.FORMAT, "verdict": verdict, "data": data}))
        return folder / "report.md"

    monkeypatch.setattr(demo, "run_demo", fake_run_demo)
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--seed", "2"]) == 0
    assert calls == [("opencellplm-demo", False, 2)]
    lines = capsys.readouterr().out.splitlines()
    assert lines[-3] == "ground truth: the labels"
    assert lines[-2] == "losses: PCA beats m (clustering) on best ARI by 0.260."
    assert lines[-1] == f"report: {tmp_path.resolve() / 'opencellplm-demo' / 'report.md'}"


def test_cli_demo_refuses_an_existing_folder(tmp_path, caplog):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "data.h5ad").write_text("precious")
    with caplog.at_level(logging.ERROR):
        assert main(["demo", "--out", str(tmp_path / "out"), "--overwrite"]) == 2
    assert "not a demo folder" in caplog.text
    assert (tmp_path / "out" / "data.h5ad").read_text() == "precious"


def test_a_win_is_a_difference_beyond_the_combined_sd_of_the_seeds():
    # 0.001 ahead on average, but the splits alone move macro F1 by 0.02: a tie within sd, not a win
    close = demo._compare("cellplm", "knn", {"macro F1": ([0.651, 0.630, 0.672], [0.650, 0.640, 0.660])})
    assert close["wins"] == [] and close["losses"] == []
    (tie,) = close["ties"]
    assert tie["difference"] == pytest.approx(0.001) and tie["sd"] == pytest.approx(0.023, abs=1e-3)
    clear = demo._compare("cellplm", "knn", {"macro F1": ([0.80, 0.82, 0.81], [0.60, 0.62, 0.61])})
    assert [w["figure"] for w in clear["wins"]] == ["macro F1"] and clear["wins"][0]["sd"] == pytest.approx(
        0.014, abs=1e-3
    )
    line = demo.verdict_lines(
        {"verdict": [close | {"task": "annotation", "model": "m, fine-tuned,", "other": "`knn`"}]}
    )
    assert line["ties"] == ["m, fine-tuned and `knn` tie within sd (annotation) on macro F1 (+0.001, sd 0.023)."]


def test_a_lower_error_is_a_win_beyond_the_spread_of_the_untrained_initialisations():
    # one pretrained value against five random networks: RMSE lower by 0.2 with the networks spread by 0.016
    untrained = [1.10, 1.12, 1.09, 1.13, 1.11]
    values = {
        "RMSE": ([0.91], untrained),
        "MAE": ([0.90], [0.70, 0.71, 0.69, 0.72, 0.70]),
        "Pearson r": ([0.5], [0.49, 0.52, 0.48, 0.51, 0.50]),
    }
    compared = demo._compare("cellplm_zero_shot", "cellplm_untrained", values, lower=("RMSE", "MAE"))
    assert [w["figure"] for w in compared["wins"]] == ["RMSE"] and compared["wins"][0]["better"] == "lower"
    assert compared["wins"][0]["sd"] == pytest.approx(np.std(untrained, ddof=1), abs=1e-3)
    assert [w["figure"] for w in compared["losses"]] == ["MAE"]  # a higher error loses
    assert [w["figure"] for w in compared["ties"]] == ["Pearson r"]  # within the networks' spread
    line = demo.verdict_lines(
        {
            "verdict": [
                compared | {"task": "denoising", "model": "m, zero-shot,", "other": "the untrained m architecture"}
            ]
        }
    )
    assert line["wins"] == ["m, zero-shot, beats the untrained m architecture (denoising) on RMSE by 0.200 (sd 0.016)."]
    assert line["losses"] == ["The untrained m architecture beats m, zero-shot (denoising) on MAE by 0.196 (sd 0.011)."]
    # a Pearson r that is not finite (a constant prediction) is left out, not counted as a loss
    nan = demo._compare("a", "b", {"Pearson r": ([float("nan")], [0.1, 0.2])})
    assert nan["wins"] == nan["losses"] == nan["ties"] == []


def test_the_untrained_architecture_matches_genes_by_the_same_rule_and_its_recipe_says_so(tmp_path, tiny, cells):
    upper = CellPLM(tiny.module, [g.upper() for g in GENES], meta={"gene_id_rule": "upper"}, source={"name": "up"})
    cells.var_names = [g.lower() for g in GENES]  # matched only through the "upper" rule
    report = _run(tmp_path / "demo", upper, cells)
    results = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert results["model"]["n_genes_matched"] == results["model"]["n_genes_matched_untrained"] == 60
    text = report.read_text()
    assert "meta={'gene_id_rule': model.gene_id_rule})`, the same vocabulary and gene-id rule" in text
    assert "(60 of the data's 60 matched, 60 by the untrained architecture)" in text
    assert all(abs(w["difference"]) > w["sd"] for c in results["verdict"] for w in c["wins"] + c["losses"])
    assert len(results["representations"]) == 7  # pretrained, five untrained initialisations, PCA


def test_a_model_of_ensembl_ids_is_refused_before_any_work_on_data_of_symbols(tmp_path, tiny):
    from .conftest import vocabulary

    ensembl = CellPLM(tiny.module, vocabulary(len(GENES)), source={"name": "converted-official"})
    symbols = synthetic_adata(50, 60, n_types=2, seed=0)
    symbols.var_names = [f"CD{i}" for i in range(60)]
    with pytest.raises(ValueError) as caught:
        demo.run_demo(tmp_path / "out", model=ensembl, adata=symbols, annotation_steps=4)
    assert str(caught.value).startswith(
        "converted-official names genes by Ensembl id (e.g. ['ENSG00000000000', 'ENSG00000000001']), but the "
        "var_names of the given cells are gene symbols (e.g. ['CD0', 'CD1']): none would match"
    )
    assert "pass run_demo(adata=...) cells whose var_names are the model's Ensembl ids" in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_the_default_data_say_how_their_labels_were_made():
    _, data = demo._data(None, "cell_type")
    assert "assigned by correlating its expression with bulk-sorted reference populations" in data["ground_truth"]
    assert "not measured by sorting the cell itself" in data["ground_truth"]
