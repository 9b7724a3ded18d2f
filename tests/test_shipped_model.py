"""The model shipped inside the package loads by name, with its provenance."""

from __future__ import annotations

import numpy as np
import pytest

from opencellplm import CellPLM, pretrained


def test_shipped_model_loads_by_name_and_records_its_recipe():
    assert "cellplm-small" in pretrained.available()
    model = CellPLM.from_pretrained("cellplm-small")
    meta = model.meta
    assert meta["recipe"] == "python scripts/pretrain_shipped_model.py"
    assert meta["size_mb"] <= 25
    curve = meta["validation_loss"]["curve"]
    best = min(curve, key=lambda point: point["val_loss"])
    assert len(curve) >= 2 and meta["step"] == best["step"]  # the weights shipped are the best validated
    assert set(meta["data"]["datasets"]) == {"pbmc3k", "celltypist_sample", "merfish_u2os", "mouse_10k_subset"}
    assert model.config.positional_encoding == "sinusoidal"
    assert "CD3E" in model.genes  # upper-cased symbols


def test_shipped_model_embeds_cells():
    import anndata as ad
    import pandas as pd

    model = CellPLM.from_pretrained("cellplm-small")
    genes = model.genes[:200]
    rng = np.random.default_rng(0)
    adata = ad.AnnData(
        rng.negative_binomial(1, 0.7, size=(50, 200)).astype(np.float32),
        obs=pd.DataFrame(index=[f"c{i}" for i in range(50)]),
        var=pd.DataFrame(index=genes),
    )
    embedding = model.get_latent_representation(adata)
    assert embedding.shape == (50, model.config.latent.dim) and np.isfinite(embedding).all()


def test_unknown_name():
    with pytest.raises(KeyError, match="no shipped model named 'nope'"):
        pretrained.path("nope")
