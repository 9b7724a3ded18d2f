"""The benchmark report: sections, tables, bold bests, the verdict sentence, reasons, figures, safe writing."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from opencellplm.benchmark import write_report
from opencellplm.benchmark.report import (
    README_END,
    README_START,
    readme_section,
    summary_tables,
    update_readme,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SCVI_REASON = "extra 'scvi' not installed (pip install 'opencellplm[scvi]')"
OOM_REASON = "RuntimeError: out of memory"
LOAD_REASON = "data set failed to load: merfish_small.h5ad not found"


def _record(task, dataset, method, seed, family, *, simulated=False, status="ok", reason=None, metrics=None):
    return {
        "task": task,
        "dataset": dataset,
        "method": method,
        "seed": seed,
        "family": family,
        "simulated": simulated,
        "status": status,
        "reason": reason,
        "metrics": metrics or {},
        "wall_s": 1.0 + seed if status == "ok" else None,
        "peak_mb": 100.0 + 10 * seed if status == "ok" else None,
        "checkpoint": {"name": "cellplm-small", "sha256": "0123456789abcdef" * 4},
        "versions": {"opencellplm": "0.1.0"},
        "protocol": {},
    }


def _results() -> dict:
    records = []
    # Clustering on real data: CellPLM wins ARI against knn_on_pca, loses NMI against pca.
    clustering = {
        "cellplm_zero_shot": ("cellplm", [0.60, 0.62], [0.54, 0.56]),
        "pca": ("baseline", [0.40, 0.42], [0.59, 0.61]),
        "knn_on_pca": ("baseline", [0.51, 0.53], [0.50, 0.52]),
    }
    for method, (family, ari, nmi) in clustering.items():
        for seed in (0, 1):
            metrics = {"ari_best": ari[seed], "nmi": nmi[seed]}
            records.append(_record("clustering", "pbmc_tiny", method, seed, family, metrics=metrics))
    for seed in (0, 1):
        records.append(
            _record("clustering", "pbmc_tiny", "scvi", seed, "baseline", status="skipped", reason=SCVI_REASON)
        )
    records.append(
        _record("clustering", "pbmc_tiny", "cellplm_fine_tuned", 0, "cellplm", status="failed", reason=OOM_REASON)
    )
    # Imputation on simulated data: CellPLM best on RMSE (lower is better), knn_impute best on Pearson.
    imputation = {
        "cellplm_imputer": ("cellplm", [0.30, 0.32], [0.60, 0.62]),
        "mean_expression": ("baseline", [0.90, 0.92], [0.10, 0.12]),
        "knn_impute": ("baseline", [0.40, 0.42], [0.70, 0.72]),
    }
    for method, (family, rmse, pearson) in imputation.items():
        for seed in (0, 1):
            metrics = {"rmse": rmse[seed], "pearson": pearson[seed]}
            records.append(_record("imputation", "sim_spatial", method, seed, family, simulated=True, metrics=metrics))
    # A real data set that failed to load.
    records.append(
        _record("imputation", "merfish_small", "cellplm_imputer", 0, "cellplm", status="failed", reason=LOAD_REASON)
    )
    return {
        "schema_version": 1,
        "profile": "quick",
        "settings": {"tasks": ["clustering", "imputation"], "seeds": [0, 1]},
        "environment": {"opencellplm": "0.1.0", "torch": "2.13.0", "python": "3.11.2", "torch_threads": 2},
        "started": "2026-11-27T15:00:00+00:00",
        "finished": "2026-11-27T15:02:03+00:00",
        "wall_s": 123.4,
        "tasks": {
            "clustering": {
                "title": "Zero-shot clustering",
                "protocol": "Leiden on each representation over a grid of resolutions.\nBest ARI and NMI over it.",
                "metrics": {
                    "ari_best": {"label": "ARI (best over resolutions)", "better": "higher"},
                    "nmi": {"label": "NMI", "better": "higher"},
                },
                "primary": "ari_best",
            },
            "imputation": {
                "title": "Spatial imputation",
                "protocol": "One gene held out of the spatial panel.\nPredicted from the other genes.",
                "metrics": {
                    "rmse": {"label": "RMSE", "better": "lower"},
                    "pearson": {"label": "Pearson r", "better": "higher"},
                },
                "primary": "rmse",
            },
        },
        "records": records,
        "artifacts": {
            "umap": [{"task": "clustering", "dataset": "pbmc_tiny", "seed": 0, "path": "artifacts/umap.npz"}],
            "spatial_map": [
                {"task": "imputation", "dataset": "sim_spatial", "seed": 0, "path": "artifacts/spatial.npz"}
            ],
        },
    }


def _write_artifacts(out: Path) -> None:
    rng = np.random.default_rng(0)
    (out / "artifacts").mkdir(parents=True)
    labels = np.repeat(np.array(["B cell", "T cell", "monocyte"]), 20)
    centres = rng.normal(scale=4, size=(3, 8))
    cellplm = centres[np.repeat(np.arange(3), 20)] + rng.normal(size=(60, 8))
    cellplm[:3] = np.nan  # cells the model left out
    pca = rng.normal(size=(60, 5))
    np.savez(out / "artifacts" / "umap.npz", labels=labels, cellplm_zero_shot=cellplm, pca=pca)
    coords = rng.uniform(size=(80, 3)) * [100, 40, 10]
    truth = np.sin(coords[:, 0] / 15)
    np.savez(
        out / "artifacts" / "spatial.npz",
        coords=coords,
        gene=np.array("eve"),
        truth=truth,
        **{"pred:cellplm_imputer": truth + rng.normal(scale=0.2, size=80), "pred:knn_impute": truth * 0.5},
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, dict, Path]:
    out = tmp_path_factory.mktemp("bench")
    results = _results()
    _write_artifacts(out)
    (out / "results.json").write_text(json.dumps(results))
    (out / "figures").mkdir()
    (out / "figures" / "mine.png").write_bytes(b"not ours")  # a file the report must leave alone
    (out / "notes.txt").write_text("keep me")
    report = write_report(out)  # reads results.json
    return out, results, report


def _section(text: str, heading: str) -> str:
    """The text from ``heading`` to the next heading of the same or a higher level."""
    start = text.index(heading + "\n")
    level = len(heading) - len(heading.lstrip("#"))
    rest = text[start + len(heading) + 1 :]
    ends = [m.start() for m in re.finditer(rf"^#{{1,{level}}} ", rest, flags=re.M)]
    return heading + "\n" + rest[: ends[0] if ends else len(rest)]


def _row(section: str, method: str) -> list[str]:
    line = next(line for line in section.splitlines() if line.startswith(f"| `{method}` |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_report_sections_and_header(run):
    out, _, report = run
    assert report == out / "report.md" and report.is_file()
    text = report.read_text()
    assert text.startswith("# ")
    for expected in ("Profile: quick", "123.4 s", "cellplm-small (sha256 0123456789ab)", "torch 2.13.0"):
        assert expected in text
    assert "12 ok, 2 failed, 2 skipped" in text
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    names = [h for h in headings if h != "## At a glance"]
    assert names == [
        "## Zero-shot clustering (`clustering`)",
        "## Spatial imputation (`imputation`)",
        "## Simulated data",
    ]
    simulated = _section(text, "## Simulated data")
    assert "### Spatial imputation: sim_spatial (simulated)" in simulated
    assert "On this simulated data set, CellPLM" in simulated
    # The simulated data set is not in the real-data section of its task.
    assert "sim_spatial" not in _section(text, "## Spatial imputation (`imputation`)").split("![")[0]
    assert "> Leiden on each representation" in text and "> Best ARI and NMI over it." in text


def test_table_cells_and_bold(run):
    _, _, report = run
    text = report.read_text()
    clustering = _section(text, "### pbmc_tiny")
    row = _row(clustering, "cellplm_zero_shot")
    assert row[:3] == ["`cellplm_zero_shot`", "CellPLM", "2"]
    assert re.fullmatch(r"\*\*0\.610 ± 0\.014\*\*", row[3])  # best ARI: bold, mean ± sd
    assert row[5] == "1.5 ± 0.7" and row[6] == "105.0 ± 7.1"  # wall s, peak MB: 1 decimal
    assert _row(clustering, "pca")[4].startswith("**0.600")  # best NMI is pca's
    assert not _row(clustering, "cellplm_zero_shot")[4].startswith("**")
    # Rows: the CellPLM family first.
    methods = [line.split("`")[1] for line in clustering.splitlines() if line.startswith("| `")]
    assert methods == ["cellplm_zero_shot", "pca", "knn_on_pca"]

    simulated = _section(text, "### Spatial imputation: sim_spatial (simulated)")
    assert _row(simulated, "cellplm_imputer")[3].startswith("**0.310 ± ")  # lower is better: lowest bold
    assert not _row(simulated, "mean_expression")[3].startswith("**")
    assert _row(simulated, "knn_impute")[4].startswith("**0.710 ± ")  # higher is better: highest bold
    assert not _row(simulated, "cellplm_imputer")[4].startswith("**")


def test_verdict_sentence(run):
    _, _, report = run
    text = report.read_text()
    assert (
        "CellPLM (cellplm_zero_shot) beats the best baseline on ARI (best over resolutions) "
        "(0.610 vs 0.520, knn_on_pca) and loses on NMI (0.550 vs 0.600, pca)." in text
    )
    assert (
        "On this simulated data set, CellPLM (cellplm_imputer) beats the best baseline on RMSE "
        "(0.310 vs 0.410, knn_impute) and loses on Pearson r (0.610 vs 0.710, knn_impute)." in text
    )


def test_failed_and_skipped_reasons(run):
    _, _, report = run
    text = report.read_text()
    clustering = _section(text, "### pbmc_tiny")
    assert f"- `scvi` (baseline) skipped on seeds 0, 1: {SCVI_REASON}" in clustering
    assert f"- `cellplm_fine_tuned` (CellPLM) failed on seed 0: {OOM_REASON}" in clustering
    failed_load = _section(text, "### merfish_small")
    assert "No method produced a result on this data set, so there is nothing to compare." in failed_load
    assert LOAD_REASON in failed_load


def test_figures_exist_and_nothing_else_touched(run):
    out, _, report = run
    links = re.findall(r"\]\((figures/[^)]+)\)", report.read_text())
    names = {Path(link).name for link in links}
    assert {
        "bars_clustering.png",
        "time_clustering.png",
        "bars_imputation.png",
        "time_imputation.png",
        "umap_clustering_pbmc_tiny.png",
        "spatial_imputation_sim_spatial.png",
    } <= names
    for link in links:
        assert (out / link).read_bytes()[:8] == PNG_MAGIC
    assert "Figures not drawn" not in report.read_text()
    assert (out / "figures" / "mine.png").read_bytes() == b"not ours"
    assert (out / "notes.txt").read_text() == "keep me"
    assert not [p for p in out.rglob("*") if p.name.startswith(".") or p.name.endswith(".partial")]


def test_broken_artifact_is_listed_not_fatal(tmp_path):
    results = _results()
    results["artifacts"] = {
        "spatial_map": [{"task": "imputation", "dataset": "sim_spatial", "seed": 0, "path": "gone.npz"}]
    }
    report = write_report(tmp_path, results)
    text = report.read_text()
    assert "## Figures not drawn" in text and "gone.npz" in text
    assert not (tmp_path / "figures" / "spatial_imputation_sim_spatial.png").exists()
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".partial")]


def test_summary_tables():
    tables = summary_tables(_results())
    assert list(tables) == [("clustering", "pbmc_tiny"), ("imputation", "sim_spatial"), ("imputation", "merfish_small")]
    frame = tables[("clustering", "pbmc_tiny")]
    assert list(frame.index) == ["cellplm_zero_shot", "pca", "knn_on_pca"]  # only methods with an ok record
    assert frame.at["pca", "n_seeds"] == 2 and frame.at["pca", "family"] == "baseline"
    assert frame.at["pca", "nmi_mean"] == pytest.approx(0.60)
    assert frame.at["pca", "nmi_sd"] == pytest.approx(np.std([0.59, 0.61], ddof=1))
    assert tables[("imputation", "sim_spatial")].attrs["simulated"] is True
    assert tables[("imputation", "merfish_small")].empty


def test_one_seed_shows_the_mean_alone_and_missing_family_is_said():
    results = _results()
    results["records"] = [r for r in results["records"] if r["seed"] == 0 and r["family"] == "baseline"]
    section = readme_section(results)
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    assert rows and not any("±" in row for row in rows)  # one seed: the mean alone
    assert "| `pca` | baseline | 1 | 0.400 |" in section
    assert "no CellPLM method produced a result" in section


def test_gap_within_the_seeds_sd_is_said():
    results = _results()
    for record in results["records"]:
        if record["method"] == "pca":  # NMI 0.540 ± 0.085 against CellPLM's 0.550 ± 0.014
            record["metrics"]["nmi"] = [0.48, 0.60][record["seed"]]
    section = readme_section(results)
    assert (
        "CellPLM (cellplm_zero_shot) beats the best baseline on ARI (best over resolutions) (0.610 vs 0.520, "
        "knn_on_pca) and ties on NMI (0.550 vs 0.540, pca; within the seeds' sd)." in section
    )
    assert "| Zero-shot clustering | pbmc_tiny | ARI (best over resolutions) |" in section


def test_a_gap_is_a_win_only_beyond_the_combined_sd_and_one_seed_wins_nothing():
    results = _results()
    for record in results["records"]:
        if record["method"] == "knn_on_pca":  # ARI 0.595 ± 0.064 against CellPLM's 0.610 ± 0.014: larger sd
            record["metrics"]["ari_best"] = [0.55, 0.64][record["seed"]]
    section = readme_section(results)
    assert "ties with the best baseline on ARI (best over resolutions) (0.610 vs 0.595" in section
    assert "| tie (within sd) |" in section
    results["records"] = [r for r in _results()["records"] if r["seed"] == 0]
    section = readme_section(results)
    assert (
        "CellPLM (cellplm_zero_shot) is ahead of the best baseline, with no spread measured to tell a win, on ARI "
        "(best over resolutions) (0.600 vs 0.510, knn_on_pca; one seed)" in section
    )
    assert "| CellPLM ahead on one seed (no spread measured) |" in section
    assert " beats " not in section


def _with_untrained(ari: list[float], nmi: list[float]) -> dict:
    """The results with the untrained architecture on pbmc_tiny: per seed one record per initialisation (``init``),
    the values of ``ari`` / ``nmi`` (one per initialisation), a little higher on seed 1."""
    results = _results()
    for seed in (0, 1):
        for i, (a, n) in enumerate(zip(ari, nmi)):
            metrics = {"ari_best": a + 0.01 * seed, "nmi": n + 0.01 * seed}
            record = _record("clustering", "pbmc_tiny", "cellplm_untrained", seed, "cellplm", metrics=metrics)
            results["records"].append(record | {"init": 5 * seed + i})
    return results


def test_the_untrained_architecture_is_aggregated_over_its_initialisations_and_compared_with_the_zero_shot_rows(
    caplog,
):
    ari, nmi = [0.30, 0.32, 0.34, 0.36, 0.38], [0.48, 0.53, 0.58, 0.63, 0.68]  # NMI above the zero-shot row's
    results = _with_untrained(ari, nmi)
    with caplog.at_level("WARNING"):
        frame = summary_tables(results)[("clustering", "pbmc_tiny")]
        section = readme_section(results)
    assert "share a seed" not in caplog.text  # ten records over two seeds: one per initialisation
    ari_values = ari + [a + 0.01 for a in ari]
    nmi_values = nmi + [n + 0.01 for n in nmi]
    assert frame.at["cellplm_untrained", "n_seeds"] == 2 and frame.at["cellplm_untrained", "n_runs"] == 10
    assert frame.at["cellplm_untrained", "ari_best_mean"] == pytest.approx(np.mean(ari_values))
    assert frame.at["cellplm_untrained", "ari_best_sd"] == pytest.approx(np.std(ari_values, ddof=1))
    ari_sd, nmi_sd = np.std(ari_values, ddof=1), np.std(nmi_values, ddof=1)
    assert f"| `cellplm_untrained` | CellPLM | 2 × 5 inits | 0.345 ± {ari_sd:.3f} | 0.585 ± {nmi_sd:.3f} |" in section
    # the untrained architecture is a reference, never CellPLM's best against the baselines (its NMI is higher)
    assert (
        "CellPLM (cellplm_zero_shot) beats the best baseline on ARI (best over resolutions) "
        "(0.610 vs 0.520, knn_on_pca) and loses on NMI (0.550 vs 0.600, pca)." in section
    )
    # the zero-shot rows against the untrained distribution: ahead only beyond the combined sd
    assert (
        "Pretraining: `cellplm_zero_shot` beats the untrained architecture (`cellplm_untrained`: 10 random "
        f"initialisations, 5 per seed) on ARI (best over resolutions) (0.610 vs 0.345 ± {ari_sd:.3f}) and ties on "
        f"NMI (0.550 vs 0.585 ± {nmi_sd:.3f}; within sd)." in section
    )
    glance = _section(section, "### At a glance")
    assert (
        "| Zero-shot clustering | pbmc_tiny | ARI (best over resolutions) | 0.610 | 0.345 ± "
        f"{ari_sd:.3f} (10 random initialisations, 5 per seed) | pretrained ahead | ahead 1, tie 1 (of 2) |" in glance
    )
    # an untrained architecture as good as the pretrained model: no win
    close = readme_section(_with_untrained([0.50, 0.55, 0.60, 0.65, 0.70], nmi))
    assert "| pretrained ahead |" not in close and "| tie (within sd) | tie 2 (of 2) |" in close


def test_update_readme_replaces_only_between_markers(tmp_path):
    readme = tmp_path / "README.md"
    before, after = "# Project\n\nIntro text.\n\n", "\n\n## Licence\n\nBSD.\n"
    readme.write_text(f"{before}{README_START}\nold table\n{README_END}{after}")
    results = _results()
    assert update_readme(readme, results) == readme
    text = readme.read_text()
    assert text.startswith(before + README_START) and text.endswith(README_END + after)
    inside = text[text.index(README_START) + len(README_START) : text.index(README_END)]
    assert "old table" not in inside and inside.strip() == readme_section(results).strip()
    assert "![" not in inside  # no figures in the README
    update_readme(readme, results)
    assert readme.read_text() == text  # idempotent
    assert [p.name for p in tmp_path.iterdir()] == ["README.md"]


@pytest.mark.parametrize(
    "content", ["no markers here\n", f"{README_START}\nx\n", f"{README_START}\n{README_END}\n{README_END}\n"]
)
def test_update_readme_refuses_bad_markers(tmp_path, content):
    readme = tmp_path / "README.md"
    readme.write_text(content)
    with pytest.raises(ValueError, match="marker"):
        update_readme(readme, _results())
    assert readme.read_text() == content


def test_update_readme_keeps_line_endings_outside_the_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_bytes(f"# Title\r\n\r\n{README_START}\r\nold\r\n{README_END}\r\nTail\r\n".encode())
    update_readme(readme, _results())
    content = readme.read_bytes()
    assert content.startswith(f"# Title\r\n\r\n{README_START}\n".encode())
    assert content.endswith(f"{README_END}\r\nTail\r\n".encode())


def test_a_time_under_a_millisecond_is_labelled_on_a_log_axis(monkeypatch, tmp_path):
    """A wall time recorded as 0 has no bar on a log axis; the figure says '< 1 ms' instead of showing nothing."""
    from types import SimpleNamespace

    import pandas as pd

    from opencellplm.benchmark import report

    drawn = []
    monkeypatch.setattr(report, "_save", lambda fig, target: drawn.append(fig))
    frame = pd.DataFrame(
        {"wall_s_mean": [20.0, 0.0, 0.05], "wall_s_sd": [1.0, 0.0, 0.0], "family": ["cellplm", "baseline", "baseline"]},
        index=["cellplm_fine_tuned", "unchanged", "knn_smoothing"],
    )
    task = SimpleNamespace(title="Denoising", key="denoising")
    pair = SimpleNamespace(dataset="mouse", simulated=False)
    report._time_figure(task, [(pair, frame)], tmp_path / "t.png")
    ax = drawn[0].axes[0]
    assert ax.get_xscale() == "log"
    assert [t.get_text() for t in ax.texts] == [" < 1 ms"]


def test_one_seed_figures_say_so_and_a_log_time_axis_labels_only_powers_of_ten(monkeypatch, tmp_path):
    from types import SimpleNamespace

    import pandas as pd
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from opencellplm.benchmark import report

    drawn = []
    monkeypatch.setattr(report, "_save", lambda fig, target: drawn.append(fig))
    frame = pd.DataFrame(
        {
            "wall_s_mean": [1.4, 2.5, 12.0, 35.0],  # 1.4 decades: matplotlib labelled the minor ticks, overlapping
            "wall_s_sd": [np.nan] * 4,
            "n_seeds": [1] * 4,
            "family": ["cellplm", "baseline", "baseline", "baseline"],
        },
        index=["cellplm_fine_tuned", "celltypist_style", "l1_logistic_cv", "knn_on_pca"],
    )
    task = SimpleNamespace(title="Cell type annotation", key="annotation", metrics=[])
    pair = SimpleNamespace(dataset="pbmc68k_reduced", simulated=False)
    report._time_figure(task, [(pair, frame), (pair, frame)], tmp_path / "t.png")
    fig = drawn[0]
    assert "one seed (no sd)" in fig._suptitle.get_text() and "±" not in fig._suptitle.get_text()
    FigureCanvasAgg(fig).draw()
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    assert not [t.get_text() for t in ax.get_xticklabels(minor=True) if t.get_text()]
    assert {t.get_text() for t in ax.get_xticklabels()} >= {"10"}
    assert not ax.containers[0].errorbar  # one seed: no error bars


def _lab(colours) -> np.ndarray:
    from matplotlib.colors import to_rgb

    rgb = np.array([to_rgb(c) for c in colours])
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = linear @ np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]).T
    xyz /= [0.95047, 1.0, 1.08883]
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], axis=1)


def _delta_e2000(lab1: np.ndarray, lab2: np.ndarray) -> float:
    """CIEDE2000 colour difference of two CIELAB colours (Sharma, Wu and Dalal 2005)."""
    (l1, a1, b1), (l2, a2, b2) = lab1, lab2
    c_mean = (np.hypot(a1, b1) + np.hypot(a2, b2)) / 2
    g = 0.5 * (1 - np.sqrt(c_mean**7 / (c_mean**7 + 25**7)))
    a1, a2 = (1 + g) * a1, (1 + g) * a2
    c1, c2 = np.hypot(a1, b1), np.hypot(a2, b2)
    h1, h2 = np.degrees(np.arctan2(b1, a1)) % 360, np.degrees(np.arctan2(b2, a2)) % 360
    dh = 0.0 if c1 * c2 == 0 else (h2 - h1 + 180) % 360 - 180
    d_hue = 2 * np.sqrt(c1 * c2) * np.sin(np.radians(dh / 2))
    l_mean, c_mean = (l1 + l2) / 2, (c1 + c2) / 2
    h_mean = h1 + h2 if c1 * c2 == 0 else (h1 + h2) / 2 + (180 if abs(h1 - h2) > 180 else 0)
    t = (
        1
        - 0.17 * np.cos(np.radians(h_mean - 30))
        + 0.24 * np.cos(np.radians(2 * h_mean))
        + 0.32 * np.cos(np.radians(3 * h_mean + 6))
        - 0.20 * np.cos(np.radians(4 * h_mean - 63))
    )
    s_l = 1 + 0.015 * (l_mean - 50) ** 2 / np.sqrt(20 + (l_mean - 50) ** 2)
    s_c, s_h = 1 + 0.045 * c_mean, 1 + 0.015 * c_mean * t
    r_t = (
        -np.sin(np.radians(60 * np.exp(-((((h_mean % 360) - 275) / 25) ** 2))))
        * 2
        * np.sqrt(c_mean**7 / (c_mean**7 + 25**7))
    )
    terms = ((l2 - l1) / s_l, (c2 - c1) / s_c, d_hue / s_h)
    return float(np.sqrt(sum(x**2 for x in terms) + r_t * terms[1] * terms[2]))


def test_delta_e2000_matches_the_published_test_pairs():
    # pairs 1, 7 and 17 of Sharma, Wu and Dalal's test data
    assert _delta_e2000(np.array([50, 2.6772, -79.7751]), np.array([50, 0, -82.7485])) == pytest.approx(
        2.0425, abs=1e-4
    )
    assert _delta_e2000(np.array([50, 0, 0]), np.array([50, -1, 2])) == pytest.approx(2.3669, abs=1e-4)
    assert _delta_e2000(np.array([50, 2.5, 0]), np.array([73, 25, -18])) == pytest.approx(27.1492, abs=1e-4)


@pytest.mark.parametrize("n", [2, 5, 10, 13, 20])
def test_cell_type_colours_stay_apart_up_to_20_types(n):
    """The UMAPs of the report and the demo colour up to 20 types so that any two differ clearly: CIEDE2000 above
    24 for up to 10 types, 17 for up to 20 (tab10's blue and cyan, monocyte and dendritic, and tab20's shades of
    one hue, stellate and beta, came closer)."""
    from opencellplm import demo
    from opencellplm.benchmark import report

    assert demo.category_colours is report.category_colours  # one palette for every picture
    lab = _lab(report.category_colours(n))
    closest = min(_delta_e2000(lab[i], lab[j]) for i in range(n) for j in range(i + 1, n))
    assert closest > (24 if n <= 10 else 17)
    assert (lab[:, 0] < 85).all()  # no colour too pale to see on white


def test_cellplm_rows_equal_to_no_change_are_said_to_have_learnt_nothing():
    results = _results()
    for seed in (0, 1):  # a baseline that predicts no change, scoring exactly as the CellPLM imputer
        metrics = {"rmse": [0.30, 0.32][seed], "pearson": [0.60, 0.62][seed]}
        results["records"].append(
            _record("imputation", "sim_spatial", "no_change", seed, "baseline", simulated=True, metrics=metrics)
        )
    section = readme_section(results)
    assert (
        "`cellplm_imputer` scores exactly as `no_change`, the prediction of no change: the fit left it there (a fit "
        "keeps its starting state when it never beats it on validation), so this row says nothing about what CellPLM "
        "can learn here."
    ) in section
    assert "exactly as" not in readme_section(_results())


def test_a_seed_whose_fit_kept_its_start_is_named_with_the_seeds_that_learnt():
    """One seed's fit predicting no change (its start) pulls the row's mean and sd: the report names that seed."""
    results = _results()
    # seed 1 equals the CellPLM imputer's seed 1 (a fit that kept its start); seed 0 does not
    for seed, metrics in ((0, {"rmse": 0.50, "pearson": None}), (1, {"rmse": 0.32, "pearson": 0.62})):
        results["records"].append(
            _record("imputation", "sim_spatial", "no_change", seed, "baseline", simulated=True, metrics=metrics)
        )
    section = readme_section(results)
    assert (
        "Scored exactly as the no-change baseline of the same seed: `cellplm_imputer` on seed 1 (as `no_change`)."
    ) in section
    assert "scores exactly as" not in section  # not every seed: the row is not said to have learnt nothing


def test_no_row_is_said_to_have_learnt_nothing_from_the_seeds_where_the_baseline_ran_alone():
    """The no-change baseline failed on seed 0: the CellPLM row's match on seed 1 names seed 1, not the whole row."""
    results = _results()
    matching = {"rmse": 0.32, "pearson": 0.62}  # the CellPLM imputer's seed 1
    results["records"] += [
        _record("imputation", "sim_spatial", "no_change", 0, "baseline", simulated=True, status="failed", reason="x"),
        _record("imputation", "sim_spatial", "no_change", 1, "baseline", simulated=True, metrics=matching),
    ]
    section = readme_section(results)
    assert "`cellplm_imputer` on seed 1 (as `no_change`)" in section
    assert "scores exactly as" not in section


def test_every_row_at_no_change_is_named_once_with_its_seeds():
    """A row matching on every seed and another on some are both named; a row with several records per seed (the
    untrained initialisations) counts a seed once, when all of them match."""
    results = _results()
    same = {0: {"rmse": 0.30, "pearson": 0.60}, 1: {"rmse": 0.32, "pearson": 0.62}}  # the CellPLM imputer's scores
    for seed in (0, 1):
        results["records"].append(
            _record("imputation", "sim_spatial", "no_change", seed, "baseline", simulated=True, metrics=same[seed])
        )
        for init in range(3):  # three untrained initialisations per seed, all at no change on seed 1 only
            metrics = same[seed] if seed == 1 else {"rmse": 0.40 + init / 100, "pearson": 0.5}
            record = _record("imputation", "sim_spatial", "cellplm_untrained", seed, "cellplm", simulated=True)
            results["records"].append(record | {"metrics": metrics})
    section = readme_section(results)
    assert "`cellplm_imputer` scores exactly as `no_change`" in section
    assert "`cellplm_untrained` on seed 1 (as `no_change`)." in section
