"""Zero-shot clustering score: embeddings beside PCA, three honest figures, from Python and the CLI."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from opencellplm.cli import main
from opencellplm.tasks import score_clustering
from opencellplm.testing import synthetic_adata


@pytest.fixture
def cells():
    return synthetic_adata(200, 80, n_types=3, seed=1)


def test_a_perfect_and_a_random_embedding_beside_pca(cells):
    codes = cells.obs["cell_type"].cat.codes.to_numpy()
    perfect = np.eye(3)[codes] + np.random.default_rng(0).normal(0, 0.01, (cells.n_obs, 3))
    noise = np.random.default_rng(1).normal(size=(cells.n_obs, 8))
    result = score_clustering(
        cells, "cell_type", embeddings={"perfect": perfect, "noise": noise}, baselines_run=("pca",), seeds=(0, 1)
    )
    frame = result.to_frame()
    assert list(frame.index) == ["perfect", "noise", "pca"]
    best = "best ARI (best over resolutions) mean"
    assert frame.loc["perfect", best] > 0.95 and frame.loc["noise", best] < 0.2
    assert (frame[best] >= frame["ARI at fixed resolution mean"] - 1e-12).all()  # the sweep is optimistic
    assert frame.loc["pca", "seconds"] is not None and len(result.scores["pca"]) == 2
    assert result.to_markdown().splitlines()[2].startswith("| perfect | ") and " ± " in result.to_markdown()


def test_missing_scvi_is_skipped_saying_so(cells, monkeypatch):
    from opencellplm.baselines import embedding

    def absent(*args, **kwargs):
        raise ImportError("scVI needs the scvi extra: pip install 'opencellplm[scvi]'")

    monkeypatch.setattr(embedding, "scvi_embedding", absent)
    result = score_clustering(cells, "cell_type", embeddings={"x": np.ones((200, 2))}, seeds=(0,))
    assert result.skipped == {"scvi": "scVI needs the scvi extra: pip install 'opencellplm[scvi]'"}
    assert "scvi" not in result.scores and "pca" in result.scores


def test_bad_calls(cells):
    with pytest.raises(KeyError, match=r"obs column 'celltype' not found"):
        score_clustering(cells, "celltype")
    with pytest.raises(ValueError, match="nothing to score: no embeddings given and no obsm\\['X_cellplm'\\]"):
        score_clustering(cells, "cell_type", baselines_run=())
    with pytest.raises(ValueError, match=r"unknown baseline\(s\) \['umap'\]"):
        score_clustering(cells, "cell_type", baselines_run=("umap",))


def test_embed_score_labels_prints_the_table(cells, tmp_path, capsys):
    import torch

    from opencellplm import CellPLM, CellPLMModule, EncoderConfig, LatentConfig, ModelConfig

    genes = list(cells.var_names)
    config = ModelConfig(
        n_genes=len(genes), hidden_dim=16, encoder=EncoderConfig(n_layers=1, n_heads=2),
        latent=LatentConfig(dim=8, n_clusters=4, hidden_dim=12),
    )  # fmt: skip
    torch.manual_seed(0)
    CellPLM(CellPLMModule(config), genes).save(tmp_path / "ckpt")
    cells.write_h5ad(tmp_path / "in.h5ad")
    args = [
        "embed",
        str(tmp_path / "in.h5ad"),
        "--checkpoint",
        str(tmp_path / "ckpt"),
        "--out",
        str(tmp_path / "o.h5ad"),
    ]
    logging.getLogger("opencellplm").setLevel(logging.WARNING)
    assert main([*args, "--score-labels", "cell_type", "--score-json", str(tmp_path / "s.json")]) == 0
    out = capsys.readouterr().out
    assert "clustering against obs['cell_type']" in out and "| X_cellplm |" in out and "| pca |" in out
    assert set(json.loads((tmp_path / "s.json").read_text())["scores"]) == {"X_cellplm", "pca"}
