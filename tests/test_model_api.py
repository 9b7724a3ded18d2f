"""The AnnData API: embeddings in obs order, gene alignment, sets, and errors that say what to do."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from opencellplm import CellPLM, CellPLMModule, GMVAENoise
from opencellplm._precision import autocast_dtype

from .conftest import vocabulary


@pytest.fixture
def model(tiny_config):
    torch.manual_seed(0)
    return CellPLM(CellPLMModule(tiny_config), vocabulary(tiny_config.n_genes))


def test_embed_writes_obsm_and_params(model, tiny_adata):
    before = tiny_adata.X.copy()
    assert model.embed(tiny_adata, sample_key="sample") is model
    assert tiny_adata.obsm["X_cellplm"].shape == (40, 8)
    assert tiny_adata.obsm["X_cellplm"].dtype == np.float32
    assert tiny_adata.uns["cellplm"]["X_cellplm"]["params"]["sample_key"] == "sample"
    np.testing.assert_array_equal(tiny_adata.X, before)  # the counts are untouched


def test_getter_writes_nothing_and_is_deterministic(model, tiny_adata):
    a = model.get_latent_representation(tiny_adata, sample_key="sample")
    b = model.get_latent_representation(tiny_adata, sample_key="sample")
    np.testing.assert_array_equal(a, b)
    assert "X_cellplm" not in tiny_adata.obsm and "cellplm" not in tiny_adata.uns


def test_rows_come_back_in_input_order(model, tiny_adata):
    reference = model.get_latent_representation(tiny_adata, sample_key="sample")
    perm = np.random.default_rng(1).permutation(tiny_adata.n_obs)
    shuffled = model.get_latent_representation(tiny_adata[perm].copy(), sample_key="sample")
    np.testing.assert_allclose(shuffled, reference[perm], atol=1e-5)


def test_sets_matter_and_follow_sample_key(model, tiny_adata):
    whole = model.get_latent_representation(tiny_adata)
    by_sample = model.get_latent_representation(tiny_adata, sample_key="sample")
    assert np.abs(whole - by_sample).max() > 1e-6
    first = model.get_latent_representation(tiny_adata[tiny_adata.obs["sample"] == "s1"].copy())
    np.testing.assert_allclose(by_sample[20:], first, atol=1e-6)


def test_dense_sparse_and_backed_agree(model, tiny_adata, tmp_path):
    import anndata as ad

    dense = model.get_latent_representation(tiny_adata, sample_key="sample")
    csr = tiny_adata.copy()
    csr.X = sp.csr_matrix(csr.X)
    np.testing.assert_allclose(model.get_latent_representation(csr, sample_key="sample"), dense, atol=1e-6)
    csr.write_h5ad(tmp_path / "x.h5ad")
    backed = ad.read_h5ad(tmp_path / "x.h5ad", backed="r")
    np.testing.assert_allclose(model.get_latent_representation(backed, sample_key="sample"), dense, atol=1e-6)
    backed.file.close()


def test_counts_from_a_layer(model, tiny_adata):
    expected = model.get_latent_representation(tiny_adata)
    tiny_adata.layers["counts"] = tiny_adata.X.copy()
    tiny_adata.X = np.log1p(tiny_adata.X)
    np.testing.assert_allclose(model.get_latent_representation(tiny_adata, layer="counts"), expected, atol=1e-6)


def test_gene_ids_from_a_var_column(model, tiny_adata):
    expected = model.get_latent_representation(tiny_adata)
    tiny_adata.var["ensembl"] = tiny_adata.var_names
    tiny_adata.var_names = [f"SYMBOL{i}" for i in range(tiny_adata.n_vars)]
    np.testing.assert_allclose(model.get_latent_representation(tiny_adata, gene_key="ensembl"), expected, atol=1e-6)


def test_no_gene_overlap_gives_examples_and_a_hint(model, tiny_adata):
    tiny_adata.var_names = ["CD3E", "MS4A1", "LYZ"] + [f"GENE{i}" for i in range(27)]
    with pytest.raises(ValueError) as err:
        model.get_latent_representation(tiny_adata)
    message = str(err.value)
    assert "none of the 30 genes in var_names is in the model's vocabulary of 50 genes" in message
    assert "'CD3E', 'MS4A1', 'LYZ'" in message and "'ENSG00000000000'" in message
    assert "uses Ensembl ids while these look like gene symbols" in message


def test_low_gene_overlap_warns_with_the_share(model, tiny_adata):
    tiny_adata.var_names = list(tiny_adata.var_names[:10]) + [f"GENE{i}" for i in range(20)]
    with pytest.warns(UserWarning, match=r"only 10 of 30 genes \(33.3%\)"):
        model.get_latent_representation(tiny_adata)


def test_views_are_not_written_to(model, tiny_adata):
    with pytest.raises(ValueError, match="adata is a view"):
        model.embed(tiny_adata[:10])


def test_official_noise_must_match_forward_calls(model, tiny_adata):
    noise = [GMVAENoise(torch.rand(20, 4), torch.randn(20, 8))]
    with pytest.raises(ValueError, match="fewer GMVAE noise entries than forward calls"):
        model.get_latent_representation(tiny_adata, sample_key="sample", official_compat=True, noise=noise)
    with pytest.raises(ValueError, match="more GMVAE noise entries than the 2 forward calls"):
        model.get_latent_representation(tiny_adata, sample_key="sample", official_compat=True, noise=noise * 3)


def test_inference_runs_in_eval_mode_and_restores_the_mode(model, tiny_adata):
    expected = model.get_latent_representation(tiny_adata)
    model.module.train()
    np.testing.assert_array_equal(model.get_latent_representation(tiny_adata), expected)
    assert model.module.training


@pytest.mark.parametrize("dtype", [np.int32, np.float16, np.float64])
def test_other_count_dtypes(model, tiny_adata, dtype):
    expected = model.get_latent_representation(tiny_adata)
    tiny_adata.X = tiny_adata.X.astype(dtype)
    np.testing.assert_allclose(model.get_latent_representation(tiny_adata), expected, atol=1e-6)


def test_bad_call_arguments(model, tiny_adata):
    noise = [GMVAENoise(torch.rand(40, 4), torch.randn(40, 8))]
    with pytest.raises(ValueError, match="needs official_compat=True"):
        model.get_latent_representation(tiny_adata, noise=noise)
    with pytest.raises(ValueError, match="max_cells must be a positive integer or None, got 7.5"):
        model.get_latent_representation(tiny_adata, max_cells=7.5)


def test_duplicate_vocabulary_is_refused(tiny_config):
    genes = vocabulary(tiny_config.n_genes)
    genes[1] = genes[0]
    with pytest.raises(ValueError, match=r"the vocabulary lists duplicate genes: \['ENSG00000000000'\]"):
        CellPLM(CellPLMModule(tiny_config), genes)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given when CUDA is absent")
def test_cuda_without_cuda(tiny_config):
    with pytest.raises(ValueError, match="CUDA is not available to this torch build"):
        CellPLM(CellPLMModule(tiny_config), vocabulary(tiny_config.n_genes), device="cuda")


def test_each_row_is_the_embedding_of_its_own_set(model, tiny_adata):
    """Results come back in input order exactly: recompute every set directly and compare rows."""
    from opencellplm import CellBatch
    from opencellplm.data import cell_sets

    out = model.get_latent_representation(tiny_adata, sample_key="sample", max_cells=7, seed=3, precision="fp32")
    sets = cell_sets(tiny_adata.obs["sample"].to_numpy(), 40, 7, seed=3)
    assert len(sets) == 6
    gene_index = torch.tensor([model.genes.index(g) for g in tiny_adata.var_names[:25]])
    for rows in sets:
        batch = CellBatch(counts=torch.from_numpy(tiny_adata.X[rows][:, :25]), gene_index=gene_index)
        with torch.inference_mode():
            expected = model.module(batch).embedding.numpy()
        np.testing.assert_allclose(out[rows], expected, atol=1e-6)


def test_empty_cells_get_nan_rows_and_are_counted(model, tiny_adata):
    tiny_adata.X[[4, 11]] = 0
    with pytest.warns(UserWarning, match=r"2 cells have no counts in the model's genes, .*; their rows are NaN"):
        model.embed(tiny_adata, sample_key="sample")
    emb = tiny_adata.obsm["X_cellplm"]
    assert np.isnan(emb[[4, 11]]).all() and not np.isnan(np.delete(emb, [4, 11], 0)).any()
    assert tiny_adata.uns["cellplm"]["X_cellplm"]["n_cells_left_out"] == 2


@pytest.mark.parametrize("where", ["X dense", "X csr", "layer csr"])
def test_blocked_reading_from_disk_matches_memory(model, tiny_adata, tmp_path, monkeypatch, where):
    from opencellplm.data import open_h5ad

    rng = np.random.default_rng(0)
    tiny_adata.obs["sample"] = rng.choice(["a", "b", "c"], 40)  # samples interleaved in the file
    expected = model.get_latent_representation(tiny_adata, sample_key="sample", max_cells=6)
    layer = "counts" if where.startswith("layer") else None
    if where.endswith("csr"):
        tiny_adata.X = sp.csr_matrix(tiny_adata.X)
    if layer:
        tiny_adata.layers["counts"] = tiny_adata.X
        tiny_adata.X = tiny_adata.X * 0.5  # not counts: must not be read
    tiny_adata.write_h5ad(tmp_path / "x.h5ad")
    monkeypatch.setattr("opencellplm.data.sets.READ_BLOCK_CELLS", 13)  # several sets per read, and reads of one set
    with open_h5ad(tmp_path / "x.h5ad") as on_disk:
        got = model.get_latent_representation(on_disk, layer=layer, sample_key="sample", max_cells=6)
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_on_disk_csc_is_refused(model, tiny_adata, tmp_path):
    from opencellplm.data import open_h5ad

    tiny_adata.X = sp.csc_matrix(tiny_adata.X)
    tiny_adata.write_h5ad(tmp_path / "x.h5ad")
    with open_h5ad(tmp_path / "x.h5ad") as on_disk, pytest.raises(ValueError, match="stored on disk as CSC"):
        model.get_latent_representation(on_disk)


def test_official_compat_follows_the_official_pipeline(model, tiny_adata):
    """Whole samples, consecutive chunks, and empty cells embedded rather than left out."""
    tiny_adata.X[3] = 0
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="embedded anyway, as the official pipeline does"):
        official = model.get_latent_representation(tiny_adata, sample_key="sample", official_compat=True)
    assert np.isfinite(official).all()
    torch.manual_seed(0)
    explicit = model.get_latent_representation(
        tiny_adata, sample_key="sample", official_compat=True, max_cells=None, partition="consecutive"
    )
    np.testing.assert_array_equal(official, explicit)


def test_coordinates_reach_a_model_with_positional_encoding(tiny_config, tiny_adata):
    torch.manual_seed(0)
    spatial = CellPLM(
        CellPLMModule(tiny_config.replace(positional_encoding="sinusoidal")), vocabulary(tiny_config.n_genes)
    )
    plain = spatial.get_latent_representation(tiny_adata)
    tiny_adata.obsm["spatial"] = np.random.default_rng(0).random((40, 2)) * 500
    placed = spatial.get_latent_representation(tiny_adata)
    assert np.abs(placed - plain).max() > 1e-4
    np.testing.assert_array_equal(spatial.get_latent_representation(tiny_adata, spatial_key=None), plain)
    tiny_adata.obsm["spatial"] = np.random.default_rng(0).random((40, 3))
    assert np.isfinite(spatial.get_latent_representation(tiny_adata, max_cells=15)).all()  # 3-D, tiled


def test_vocabulary_extension_adds_trainable_rows(model, tiny_adata):
    before = model.get_latent_representation(tiny_adata)
    added = model.extend_vocabulary(["NOTAGENE0", "NOTAGENE1", "ENSG00000000003", "NEW"])
    assert added == ["NOTAGENE0", "NOTAGENE1", "NEW"] and len(model.genes) == 53
    assert model.module.embedder.gene_embedding.shape == (53, 16)
    assert model.module.decoder.mean.weight.shape[0] == 53
    after = model.get_latent_representation(tiny_adata)  # the two NOTAGENE columns now count
    assert np.abs(after - before).max() > 1e-6
    np.testing.assert_allclose(model.get_latent_representation(tiny_adata[:, :25].copy()), before, atol=1e-6)


def test_embed_file_guards_its_input(model, tiny_adata, tmp_path):
    tiny_adata.write_h5ad(tmp_path / "in.h5ad")
    with pytest.raises(FileNotFoundError, match="input file not found"):
        model.embed_file(tmp_path / "absent.h5ad", tmp_path / "out.h5ad")
    with pytest.raises(ValueError, match="is an input of this command; write to another file"):
        model.embed_file(tmp_path / "in.h5ad", tmp_path / "in.h5ad", overwrite=True)
    out = model.embed_file(tmp_path / "in.h5ad", tmp_path / "out.h5ad", sample_key="sample")
    import anndata as ad

    expected = model.get_latent_representation(tiny_adata, sample_key="sample")
    np.testing.assert_allclose(ad.read_h5ad(out).obsm["X_cellplm"], expected, atol=1e-6)
    with pytest.raises(FileExistsError, match="pass overwrite=True"):
        model.embed_file(tmp_path / "in.h5ad", out)


def test_negligible_share_of_counts_is_unusable_unless_forced(model, tiny_adata):
    """One matched gene carrying almost no counts: the embedding would rest on nothing."""
    tiny_adata.var_names = [tiny_adata.var_names[0]] + [f"GENE{i}" for i in range(29)]
    tiny_adata.X[:, 0] = 0
    tiny_adata.X[:3, 0] = 1
    with pytest.raises(ValueError) as err:
        model.get_latent_representation(tiny_adata)
    assert "the 1 gene(s) found in the vocabulary carry only 0.13% of the counts" in str(err.value)
    assert "allow_low_overlap=True (--allow-low-overlap) to go on anyway" in str(err.value)
    with pytest.warns(UserWarning, match=r"carry only .*\(accepted: allow_low_overlap\)"):
        embedding = model.get_latent_representation(tiny_adata, allow_low_overlap=True)
    assert np.isfinite(embedding[:3]).all() and np.isnan(embedding[3:]).all()  # the rest have no counts


def test_ids_that_differ_only_in_case_get_a_hint(model, tiny_adata):
    """An exact-rule vocabulary (the official ones): lower-cased ids match nothing, and the error says why."""
    tiny_adata.var_names = [g.lower() for g in tiny_adata.var_names]
    with pytest.raises(ValueError, match=r"Ignoring case, 25 would match: the ids differ in case .*'ensg00000000024'"):
        model.get_latent_representation(tiny_adata)


def test_a_non_finite_embedding_is_an_error_not_a_cell_without_counts(model, tiny_adata):
    with torch.no_grad():
        model.module.encoder.layers[0].ff_out.weight[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match=r"non-finite .* for 20 of 20 cells of a cell set, e.g. \['cell20'"):
        model.embed(tiny_adata, sample_key="sample")
    assert "X_cellplm" not in tiny_adata.obsm


#: What the default precision="auto" runs on this machine's CPU.
AUTO_PRECISION = "bf16" if autocast_dtype("auto", torch.device("cpu")) else "fp32"


def test_auto_precision_is_bf16_only_where_the_hardware_has_it(monkeypatch):
    cpu = torch.device("cpu")
    cases = [(True, False, torch.bfloat16), (False, True, torch.bfloat16), (False, False, None)]
    for avx512_bf16, amx, expected in cases:
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        assert autocast_dtype("auto", cpu) is expected
    assert autocast_dtype("fp32", cpu) is None and autocast_dtype("bf16", cpu) is torch.bfloat16


def test_embed_records_the_effective_settings_and_the_checkpoint(model, tiny_adata, tmp_path):
    import hashlib

    model.save(tmp_path / "ckpt")
    loaded = CellPLM.from_pretrained(tmp_path / "ckpt")
    tiny_adata.X[4] = 0  # one cell without counts
    with pytest.warns(UserWarning, match="1 cells have no counts"):
        loaded.embed(tiny_adata)  # all defaults
    record = tiny_adata.uns["cellplm"]["X_cellplm"]
    assert record["params"] == {
        "gene_id_rule": "exact",
        "max_cells": 4000,
        "partition": "auto",
        "seed": 0,
        "official_compat": False,
        "precision": AUTO_PRECISION,  # the default "auto": bf16 where this CPU has it
        "allow_low_overlap": False,
        "n_genes_vocabulary": 50,
    }
    sha = hashlib.sha256((tmp_path / "ckpt" / "model.safetensors").read_bytes()).hexdigest()
    assert record["checkpoint"] == {"name": "ckpt", "path": str((tmp_path / "ckpt").resolve()), "sha256": sha}
    assert record["n_cells_left_out"] == 1 and record["n_genes_matched"] == 25 and record["n_cell_sets"] == 1


def test_embedding_runs_the_backbone_only(model, tiny_adata, monkeypatch):
    """The embedding needs the latent alone: the NB decoder (the widest layer) never runs."""
    before = model.get_latent_representation(tiny_adata)

    def refuse(*args, **kwargs):
        raise AssertionError("the decoder ran while embedding")

    monkeypatch.setattr(model.module.decoder, "forward", refuse)
    np.testing.assert_array_equal(model.get_latent_representation(tiny_adata), before)
    model.get_latent_representation(tiny_adata, official_compat=True)  # the official mode too


def test_precision_is_chosen_checked_and_recorded(model, tiny_adata):
    exact = model.get_latent_representation(tiny_adata, precision="fp32")
    fast = model.get_latent_representation(tiny_adata, precision="bf16")
    assert not np.array_equal(exact, fast)  # bf16 autocast did run
    cosine = (exact * fast).sum(1) / np.linalg.norm(exact, axis=1) / np.linalg.norm(fast, axis=1)
    assert cosine.min() > 0.99
    default = model.get_latent_representation(tiny_adata)
    np.testing.assert_array_equal(default, fast if AUTO_PRECISION == "bf16" else exact)
    model.embed(tiny_adata, precision="bf16")
    assert tiny_adata.uns["cellplm"]["X_cellplm"]["params"]["precision"] == "bf16"
    model.embed(tiny_adata, precision="fp32")
    assert tiny_adata.uns["cellplm"]["X_cellplm"]["params"]["precision"] == "fp32"
    model.embed(tiny_adata)
    assert tiny_adata.uns["cellplm"]["X_cellplm"]["params"]["precision"] == AUTO_PRECISION
    with pytest.raises(ValueError, match=r"precision='fp16'; choose one of \['auto', 'bf16', 'fp32'\]"):
        model.get_latent_representation(tiny_adata, precision="fp16")
    with pytest.raises(ValueError, match="official_compat reproduces the official outputs and runs in fp32"):
        model.get_latent_representation(tiny_adata, official_compat=True, precision="bf16")
    model.embed(tiny_adata, official_compat=True, precision="auto")  # auto: exact in the official mode
    assert tiny_adata.uns["cellplm"]["X_cellplm"]["params"]["precision"] == "fp32"
