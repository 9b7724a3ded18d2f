"""The torch module: shapes, sparse embedder, determinism, training step, losses."""

from __future__ import annotations

import math

import pytest
import torch

from opencellplm import AnnotationHeadConfig, CellBatch, CellPLMModule, GMVAENoise, LatentConfig, MaskingConfig
from opencellplm.module.annotation import AnnotationModule, classification_loss
from opencellplm.module.imputation import imputation_loss
from opencellplm.module.latent import gmvae_loss
from opencellplm.module.masking import gene_mask, hide_genes, thin_counts
from opencellplm.module.pretrain import reconstruction_loss
from opencellplm.nn.dropout import Dropout
from opencellplm.nn.embedding import log1p_gene_sum


def make_batch(n_cells=30, n_in=20, n_genes=50, seed=0, covariates=True):
    g = torch.Generator().manual_seed(seed)
    counts = torch.poisson(torch.rand(n_cells, n_in, generator=g) * 3)
    gene_index = torch.randperm(n_genes, generator=g)[:n_in]
    extra = {}
    if covariates:
        extra = {
            "batch": torch.randint(0, 3, (n_cells,), generator=g),
            "dataset": torch.randint(0, 2, (n_cells,), generator=g),
        }
    return CellBatch(counts=counts.to_sparse_csr(), gene_index=gene_index, **extra)


def test_sparse_gene_sum_equals_dense_product():
    table = torch.randn(50, 8)
    counts = torch.poisson(torch.rand(12, 20) * 2)
    gene_index = torch.randperm(50)[:20]
    dense = torch.log1p(counts) @ table[gene_index]
    torch.testing.assert_close(log1p_gene_sum(counts.to_sparse_csr(), gene_index, table), dense)


def test_gene_index_must_cover_input_columns():
    with pytest.raises(ValueError, match="one entry per input column"):
        log1p_gene_sum(torch.ones(3, 4).to_sparse_csr(), torch.arange(3), torch.randn(10, 2))


def test_eval_forward_shapes_and_determinism(tiny_config):
    module = CellPLMModule(tiny_config).eval()
    batch = make_batch()
    with torch.inference_mode():
        a, b = module(batch), module(batch)
    assert a.embedding.shape == (30, 8)
    assert a.nb.mean.shape == (30, 50) and a.nb.dispersion.shape == (30, 50)
    assert torch.equal(a.embedding, b.embedding)
    assert torch.equal(a.latent.cluster, torch.nn.functional.one_hot(a.latent.cluster_logits.argmax(1), 4).float())


def test_official_mode_draws_noise_in_the_official_order(tiny_config):
    """Without injected noise, official mode draws rand(N, K) then randn(N, D) from torch's generator."""
    module = CellPLMModule(tiny_config).eval()
    batch = make_batch()
    with torch.inference_mode():
        torch.manual_seed(5)
        drawn = module(batch, official=True).embedding
        torch.manual_seed(5)
        noise = GMVAENoise(torch.rand(30, 4), torch.randn(30, 8))
        replayed = module(batch, official=True, noise=noise).embedding
        other = module(batch, official=True, noise=GMVAENoise(torch.rand(30, 4), torch.randn(30, 8))).embedding
    assert torch.equal(drawn, replayed)
    assert not torch.equal(replayed, other)  # the Gumbel noise changes the chosen component
    with pytest.raises(ValueError, match=r"gumbel_uniform has shape \(5, 4\), expected \(30, 4\)"):
        module(batch, official=True, noise=GMVAENoise(torch.rand(5, 4), torch.randn(30, 8)))


def test_decoding_the_input_genes_only_gives_the_loss_of_the_whole_vocabulary(tiny_config):
    """Denoising decodes only the input's genes (in input order, a gene matched twice decoded twice): the NB
    parameters and the reconstruction loss equal those of the whole vocabulary's output, gradients included."""
    module = CellPLMModule(tiny_config).train()
    batch = make_batch()
    batch = CellBatch(batch.counts, torch.cat([batch.gene_index[:-1], batch.gene_index[:1]]))  # a repeated gene
    masking = MaskingConfig(cell_rate=0.5, gene_rate=0.3, masked_term=True)
    results = []
    for genes in (None, batch.gene_index):
        module.zero_grad()
        torch.manual_seed(3)
        out = module(batch, corrupt=masking, decode_genes=genes)
        loss = reconstruction_loss(out, masked_term=True)
        loss.total.backward()
        results.append((out.nb.at(batch.gene_index), loss.total, module.decoder.mean.weight.grad.clone()))
    (mean_all, disp_all), loss_all, grad_all = results[0]
    (mean_in, disp_in), loss_in, grad_in = results[1]
    assert mean_in.shape[1] == 20 and mean_all.shape == mean_in.shape
    torch.testing.assert_close(mean_in, mean_all)
    torch.testing.assert_close(disp_in, disp_all)
    torch.testing.assert_close(loss_in, loss_all)
    torch.testing.assert_close(grad_in, grad_all)


def test_cells_attend_to_each_other(tiny_config):
    module = CellPLMModule(tiny_config).eval()
    batch = make_batch()
    first = CellBatch(counts=batch.counts.to_dense()[:10].to_sparse_csr(), gene_index=batch.gene_index)
    with torch.inference_mode():
        whole, alone = module(batch).embedding[:10], module(first).embedding
    assert (whole - alone).abs().max() > 1e-6


def test_missing_covariate_uses_mean_by_default_and_sum_officially(tiny_config):
    module = CellPLMModule(tiny_config).eval()
    covariate = module.decoder.blocks[0].covariates["batch"]
    rows = covariate.embedding.weight
    with torch.inference_mode():
        torch.testing.assert_close(
            covariate(None, missing="mean"), covariate.norm(covariate.act(rows.mean(0, keepdim=True)))
        )
        torch.testing.assert_close(
            covariate(None, missing="sum"), covariate.norm(covariate.act(rows.sum(0, keepdim=True)))
        )
        ids = torch.tensor([2, 0])
        torch.testing.assert_close(covariate(ids, missing="mean"), covariate.norm(covariate.act(rows[ids])))


def test_covariate_id_out_of_range(tiny_config):
    module = CellPLMModule(tiny_config).eval()
    batch = make_batch()
    bad = CellBatch(counts=batch.counts, gene_index=batch.gene_index, batch=torch.full((30,), 7))
    with pytest.raises(ValueError, match=r"covariate ids must lie in \[0, 3\)"):
        module(bad)


def test_training_step_masks_drops_and_reaches_all_parameters(tiny_config):
    torch.manual_seed(0)
    config = tiny_config.replace(latent=LatentConfig(dim=8, n_clusters=4, hidden_dim=12, loss_floor=-1e9))
    module = CellPLMModule(config).train()
    batch = make_batch(n_cells=40)
    masking = MaskingConfig()
    out = module(batch, corrupt=masking)
    assert out.embedding.shape[0] == len(out.kept_cells) == int(40 * (1 - masking.drop_cell_rate))
    assert out.input_mask is not None and out.input_mask.any()
    loss = reconstruction_loss(out, masked_term=masking.masked_term)
    assert torch.isfinite(loss.total)
    loss.total.backward()
    no_grad = [n for n, p in module.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad, no_grad


@pytest.mark.parametrize("training", [False, True])
def test_only_a_given_masking_corrupts_in_train_or_eval_mode(tiny_config, training):
    module = CellPLMModule(tiny_config).train(training)
    batch = make_batch(n_cells=40)
    plain = module(batch)
    assert plain.input_mask is None and torch.equal(plain.kept_cells, torch.arange(40))
    assert plain.cells is batch and torch.equal(plain.cells.counts.to_dense(), batch.counts.to_dense())
    masking = MaskingConfig()
    out = module(batch, corrupt=masking)
    assert len(out.kept_cells) == int(40 * (1 - masking.drop_cell_rate))
    assert out.input_mask is not None and out.input_mask.any()
    loss = reconstruction_loss(out, masked_term=True).objective
    assert loss != reconstruction_loss(out, masked_term=False).objective
    assert module.training is training
    with pytest.raises(TypeError, match="corrupt must be a MaskingConfig"):
        module(batch, corrupt=True)


@pytest.mark.parametrize("beta", [False, True])
def test_masking_hides_only_masked_entries(beta):
    torch.manual_seed(1)
    from opencellplm import MaskingConfig

    counts = torch.poisson(torch.rand(200, 60) * 4) + 1  # no zeros, so every masked entry changes
    mask = gene_mask(200, 60, MaskingConfig(cell_rate=0.6, gene_rate=0.25, beta=beta), torch.device("cpu"))
    assert mask.any(1).sum() == 120  # int(0.6 * 200) cells
    share = mask[mask.any(1)].float().mean()
    expected = 5 / 18 if beta else 0.25  # mean of Beta(5, 4 / 0.25 - 3) (the 0.9 cap is rarely hit)
    assert abs(share - expected) < 0.02
    hidden = hide_genes(counts.to_sparse_csr(), mask).to_dense()
    assert torch.equal(hidden == 0, mask)
    assert torch.equal(hidden[~mask], counts[~mask])


def test_thinning_gives_chosen_cells_a_lower_depth_and_leaves_the_rest():
    torch.manual_seed(2)
    counts = torch.poisson(torch.rand(400, 80) * 6)
    config = MaskingConfig(thin_rate=0.5, thin_min_keep=0.4)
    thinned = thin_counts(counts.to_sparse_csr(), config).to_dense()
    changed = (thinned != counts).any(1)
    assert 150 <= int(changed.sum()) <= 200  # 200 cells chosen; a few keep every count by chance
    assert torch.all(thinned <= counts) and torch.all(thinned >= 0) and torch.equal(thinned, thinned.round())
    kept = thinned.sum(1) / counts.sum(1)
    assert torch.equal(thinned[kept == 1], counts[kept == 1])
    assert kept.min() > 0.3 and abs(float(kept[changed].mean()) - 0.7) < 0.03  # p ~ U(0.4, 1): mean 0.7
    assert torch.equal(thin_counts(counts.to_sparse_csr(), MaskingConfig()).to_dense(), counts)


@pytest.mark.parametrize("training", [False, True])
def test_thinning_is_a_training_augmentation_and_its_counts_are_the_target(tiny_config, training):
    module = CellPLMModule(tiny_config).train(training)
    batch = make_batch(n_cells=40)
    torch.manual_seed(0)
    out = module(batch, corrupt=MaskingConfig(thin_rate=1.0, thin_min_keep=0.2, drop_cell_rate=0.0))
    depth_in, depth_out = batch.counts.to_dense().sum(), out.cells.counts.to_dense().sum()
    assert (depth_out < depth_in) if training else torch.equal(depth_out, depth_in)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"thin_rate": 1.5}, r"masking.thin_rate must be in \[0, 1\], got 1.5"),
        ({"thin_rate": 0.5, "thin_min_keep": 0.0}, "thin_min_keep must be > 0 when thin_rate > 0"),
        ({"thin_min_keep": 1.0}, r"masking.thin_min_keep must be in \[0, 1\), got 1.0"),
    ],
)
def test_thinning_settings_are_checked(fields, message):
    from opencellplm import ConfigError

    with pytest.raises(ConfigError, match=message):
        MaskingConfig(**fields)


@pytest.mark.parametrize("n_cells", [1, 2, 3, 5])
def test_training_on_tiny_sets_gives_a_finite_loss(tiny_config, n_cells):
    torch.manual_seed(0)
    module = CellPLMModule(tiny_config).train()
    out = module(make_batch(n_cells=n_cells), corrupt=MaskingConfig())
    loss = reconstruction_loss(out, masked_term=True)
    assert torch.isfinite(loss.total)
    loss.total.backward()


def test_masked_term_matches_a_direct_computation_with_scipy():
    """The denoising term: NB of the masked entries only, means rescaled to each cell's masked total."""
    import numpy as np
    from scipy import stats

    from opencellplm.module.losses import nb_reconstruction_loss

    g = torch.Generator().manual_seed(3)
    truth = torch.poisson(torch.rand(6, 5, generator=g) * 4).double()
    mean = torch.rand(6, 5, generator=g).double() + 0.1
    disp = torch.rand(6, 5, generator=g).double() + 0.5
    mask = torch.rand(6, 5, generator=g) < 0.4
    mask[0] = False  # a cell with nothing masked does not count
    got = nb_reconstruction_loss(truth, mean, disp, mask, masked_term=True).item()

    def nll(t, mu, th):
        return -stats.nbinom.logpmf(t, th, th / (th + mu)).sum()

    expected = []
    for c in range(6):
        m = mask[c].numpy()
        if not m.any():
            continue
        t, mu, th = truth[c].numpy(), mean[c].numpy(), disp[c].numpy()
        full = nll(t, mu / mu.sum() * t.sum(), th)
        mu_m = mu[m] / mu[m].sum() * t[m].sum()
        expected.append(full + nll(t[m], mu_m, th[m]))
    np.testing.assert_allclose(got, np.mean(expected), rtol=1e-6)


def test_masked_term_on_the_masked_entries_alone_equals_the_dense_term_bit_for_bit():
    """The masked term is evaluated on the masked entries only: the loss equals,
    bit for bit in float32, the term evaluated densely over the zeroed matrix (the official way), and so do the
    gradients up to float rounding of their sums."""
    from opencellplm.distributions import nb_log_prob
    from opencellplm.module.losses import nb_reconstruction_loss

    def rescale(mu, t):
        return mu / mu.sum(1, keepdim=True) * t.sum(1, keepdim=True)

    def dense(truth, mean, disp, mask):
        cells, m = mask.any(1), mask.float()
        nll = -nb_log_prob(truth[cells], rescale(mean[cells], truth[cells]), disp[cells])
        t_m, mu_m, th_m = (truth * m)[cells], (mean * m)[cells], (disp * m)[cells]
        return (nll + (-nb_log_prob(t_m, rescale(mu_m, t_m), th_m))).sum(-1).mean()

    g = torch.Generator().manual_seed(0)
    truth = torch.poisson(torch.rand(200, 700, generator=g) * 2)
    mask = torch.rand(200, 700, generator=g) < 0.19
    mask[:3] = False  # cells with nothing masked
    mask[3, :] = False
    mask[3, 5] = True  # a cell with one masked entry
    grads = []
    for loss in (dense, lambda *a: nb_reconstruction_loss(*a, masked_term=True)):
        mean = (torch.rand(200, 700, generator=torch.Generator().manual_seed(1)) + 0.01).requires_grad_()
        disp = (torch.rand(200, 700, generator=torch.Generator().manual_seed(2)) + 0.3).requires_grad_()
        value = loss(truth, mean, disp, mask)
        value.backward()
        grads.append((value.detach(), mean.grad, disp.grad))
    (a, mean_a, disp_a), (b, mean_b, disp_b) = grads
    assert torch.equal(a, b)
    torch.testing.assert_close(mean_b, mean_a, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(disp_b, disp_a, rtol=1e-5, atol=1e-6)


def test_cpu_dropout_keeps_the_share_scales_by_the_kept_share_and_routes_gradients_through_the_kept():
    torch.manual_seed(0)
    dropout = Dropout(0.3)
    x = torch.randn(400, 500, requires_grad=True)
    y = dropout(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.7) < 0.01
    torch.testing.assert_close(y[kept], x[kept] / 0.7)
    grad = torch.randn_like(y)
    y.backward(grad)
    torch.testing.assert_close(x.grad, torch.where(kept, grad / 0.7, torch.zeros_like(grad)))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the mask keeps the input's precision
        assert dropout(torch.nn.Linear(8, 8)(torch.randn(4, 8))).dtype == torch.bfloat16
    torch.manual_seed(1)
    first = dropout(x.detach())
    torch.manual_seed(1)
    assert torch.equal(first, dropout(x.detach()))  # seeded like every other draw
    assert torch.equal(dropout.eval()(x), x)


def test_annotation_labels_follow_dropped_cells_in_training(tiny_config):
    config = tiny_config.replace(decoder=None, latent=LatentConfig(kind="ae", dim=8))
    torch.manual_seed(4)
    module = AnnotationModule(config, AnnotationHeadConfig(n_classes=3)).train()
    labels = torch.randint(0, 3, (30,))
    mask = torch.arange(30) % 3 != 0
    out = module(make_batch(covariates=False), corrupt=MaskingConfig())
    assert len(out.kept_cells) == 21
    loss = classification_loss(out, labels, mask=mask)
    kept = out.kept_cells
    expected = torch.nn.functional.cross_entropy(out.logits[mask[kept]], labels[kept][mask[kept]])
    torch.testing.assert_close(loss.total, expected)
    nobody = classification_loss(out, labels, mask=torch.zeros(30, dtype=torch.bool))
    assert nobody.total.item() == 0.0


def test_cell_batch_checks_its_fields():
    counts = torch.poisson(torch.rand(4, 3) * 3)
    coo = CellBatch(counts=counts.to_sparse(), gene_index=torch.arange(3))
    assert coo.counts.is_sparse_csr and torch.equal(coo.counts.to_dense(), counts)
    with pytest.raises(ValueError, match=r"gene_index must be an integer tensor of shape \(3,\)"):
        CellBatch(counts=counts, gene_index=torch.arange(4))
    with pytest.raises(ValueError, match=r"batch ids must be an integer tensor of shape \(4,\)"):
        CellBatch(counts=counts, gene_index=torch.arange(3), batch=torch.zeros(4))
    with pytest.raises(ValueError, match=r"coords must be a float tensor of shape \(4, 2 or 3\)"):
        CellBatch(counts=counts, gene_index=torch.arange(3), coords=torch.zeros(4, 4))


def test_gene_index_outside_the_vocabulary(tiny_config):
    module = CellPLMModule(tiny_config).eval()
    batch = CellBatch(counts=torch.ones(2, 3), gene_index=torch.tensor([0, 1, 50]))
    with pytest.raises(ValueError, match=r"gene_index must lie in \[0, 50\)"):
        module(batch)


def test_gmvae_loss_terms_match_direct_computation():
    config = LatentConfig(dim=3, n_clusters=4, loss_floor=-1e9, gaussian_weight=2.0, categorical_weight=3.0)
    torch.manual_seed(2)
    z, m, pm = torch.randn(3, 5, 3).unbind(0)
    v, pv = (torch.rand(2, 5, 3) + 0.5).unbind(0)
    logits = torch.randn(5, 4)
    normal = torch.distributions.Normal
    gauss = (normal(m, (v + 1e-8).sqrt()).log_prob(z).sum(1) - normal(pm, (pv + 1e-8).sqrt()).log_prob(z).sum(1)).mean()
    p = logits.softmax(1)
    kl_uniform = (p * (p.log() + math.log(4))).sum(1).mean()
    torch.testing.assert_close(gmvae_loss(z, m, v, pm, pv, logits, config), 2.0 * gauss + 3.0 * kl_uniform)
    floored = LatentConfig(dim=3, n_clusters=4, loss_floor=1e6, gaussian_weight=2.0, categorical_weight=3.0)
    assert gmvae_loss(z, m, v, pm, pv, logits, floored).item() == 5e6


def test_annotation_head_and_loss(tiny_config):
    config = tiny_config.replace(decoder=None, latent=LatentConfig(kind="ae", dim=8))
    module = AnnotationModule(config, AnnotationHeadConfig(n_classes=3, n_hidden_layers=1, hidden_dim=10)).eval()
    batch = make_batch(covariates=False)
    labels = torch.randint(0, 3, (30,))
    mask = torch.arange(30) % 2 == 0
    out = module(batch)
    loss = classification_loss(out, labels, mask=mask)
    expected = torch.nn.functional.cross_entropy(out.logits[mask], labels[mask])
    torch.testing.assert_close(loss.total, expected)
    with pytest.raises(ValueError, match="no NB decoder"):
        reconstruction_loss(out)


def test_reconstruction_aligns_columns_by_gene(tiny_config):
    """With a shuffled subset of genes, the default loss reads the decoder column of each gene."""
    module = CellPLMModule(tiny_config).eval()
    batch = make_batch()
    with torch.inference_mode():
        out = module(batch)
        by_gene = reconstruction_loss(out).objective
        from opencellplm.module.losses import nb_reconstruction_loss

        truth = batch.counts.to_dense()
        cols = batch.gene_index
        expected = nb_reconstruction_loss(truth, out.nb.mean[:, cols], out.nb.dispersion[:, cols])
        by_position = reconstruction_loss(out, alignment="position").objective
    torch.testing.assert_close(by_gene, expected)
    assert by_gene != by_position


def test_imputation_prediction_keeps_measured_totals(tiny_config):
    module = CellPLMModule(tiny_config).eval()
    batch = make_batch()
    measured = torch.arange(20) < 15
    with torch.inference_mode():
        loss = imputation_loss(module(batch), measured=measured)
    truth = batch.counts.to_dense()
    torch.testing.assert_close(loss.prediction[:, measured].sum(1), truth[:, measured].sum(1))


def test_positional_encoding_uses_coordinates_except_in_official_mode(tiny_config):
    module = CellPLMModule(tiny_config.replace(positional_encoding="sinusoidal")).eval()
    batch = make_batch()
    coords = torch.rand(30, 2)
    placed = CellBatch(counts=batch.counts, gene_index=batch.gene_index, coords=coords)
    noise = GMVAENoise(torch.rand(30, 4), torch.randn(30, 8))
    with torch.inference_mode():
        without, with_coords = module(batch).embedding, module(placed).embedding
        official_a = module(batch, official=True, noise=noise).embedding
        official_b = module(placed, official=True, noise=noise).embedding
    assert (without - with_coords).abs().max() > 1e-4
    assert torch.equal(official_a, official_b)


def test_sinusoid_table_layout():
    from opencellplm.nn.positional import sinusoid_table

    table = sinusoid_table(8, grid_size=5)  # row i*5+j: first half encodes j, second half encodes i
    assert table.shape == (25, 8)
    torch.testing.assert_close(table[2 * 5 + 3, :4], table[3, :4])  # same j=3
    torch.testing.assert_close(table[2 * 5 + 3, 4:], table[2 * 5, 4:])  # same i=2
    torch.testing.assert_close(table[0], torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0]))


def test_cell_batch_moves_every_field():
    batch = CellBatch(
        counts=torch.ones(3, 2),
        gene_index=torch.arange(2),
        coords=torch.rand(3, 2),
        batch=torch.zeros(3, dtype=torch.long),
    )
    moved = batch.to("meta")
    assert all(t.device.type == "meta" for t in (moved.counts, moved.gene_index, moved.coords, moved.batch))
    assert moved.dataset is None


def test_positional_encoding_in_3d_encodes_every_axis():
    from opencellplm.nn.positional import SinusoidalPositionalEncoding, sinusoid_table

    pe = SinusoidalPositionalEncoding(64, grid_size=100)
    coords2 = torch.tensor([[0.3, 0.7], [0.0, 1.0]])
    bins = ((coords2 * 1.02 - 0.01) * 100).long().clamp(0, 99)
    torch.testing.assert_close(pe(coords2, 2), sinusoid_table(64, 100)[bins[:, 0] * 100 + bins[:, 1]])
    base = torch.tensor([[0.2, 0.4, 0.6]])
    codes = [pe(base, 1)]
    for axis in range(3):
        moved = base.clone()
        moved[0, axis] = 0.9
        codes.append(pe(moved, 1))
    width = 2 * (64 // 6)  # one block per axis, last axis first, then zero padding
    blocks = [slice(0, width), slice(width, 2 * width), slice(2 * width, 3 * width)]
    for axis, block in zip(range(3), reversed(blocks)):
        changed = (codes[axis + 1] - codes[0]).abs()[0]
        outside = torch.ones(64, dtype=torch.bool)
        outside[block] = False
        assert changed[block].max() > 0.1 and (changed[outside] == 0).all()
    assert (codes[0][0, 3 * width :] == 0).all()


def test_gene_sum_reads_the_table_in_bf16_only_for_inference_under_autocast():
    torch.manual_seed(0)
    table = torch.randn(50, 8, requires_grad=True)
    counts = torch.tensor([[0.0, 3.0, 1.0, 0.0], [2.0, 0.0, 0.0, 7.0]]).to_sparse_csr()
    gene_index = torch.tensor([4, 9, 20, 33])
    exact = log1p_gene_sum(counts, gene_index, table)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        trained = log1p_gene_sum(counts, gene_index, table)  # gradients wanted: fp32 rows
        with torch.inference_mode():
            fast = log1p_gene_sum(counts, gene_index, table)
    assert trained.dtype == torch.float32 and fast.dtype == torch.bfloat16
    torch.testing.assert_close(trained, exact)
    torch.testing.assert_close(fast.float(), exact, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("inference", [False, True])
def test_gene_sum_keeps_its_dtypes_whatever_autocast_does_to_log1p(monkeypatch, inference):
    """CUDA autocast runs log1p in fp32; a bf16 table with fp32 weights then crashed embedding_bag (found on an
    H100). Here log1p answers fp32 as it does under CUDA autocast: the weights must still match the table."""
    import torch.nn.functional as F

    from opencellplm.nn import embedding

    real_log1p, real_bag, seen = torch.log1p, F.embedding_bag, []
    monkeypatch.setattr(torch, "log1p", lambda x: real_log1p(x.float()))

    def bag(rows, table, offsets, **kw):
        assert not torch.is_autocast_enabled("cpu"), "embedding_bag must run outside autocast"
        assert kw["per_sample_weights"].dtype == table.dtype, (kw["per_sample_weights"].dtype, table.dtype)
        seen.append(table.dtype)
        return real_bag(rows, table, offsets, **kw)

    monkeypatch.setattr(embedding.F, "embedding_bag", bag)
    table = torch.randn(50, 8, requires_grad=not inference)
    counts = torch.tensor([[0.0, 3.0, 1.0, 0.0], [2.0, 0.0, 0.0, 7.0]]).to_sparse_csr()
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.inference_mode(inference):
        out = embedding.log1p_gene_sum(counts, torch.tensor([4, 9, 20, 33]), table)
    expected = torch.bfloat16 if inference else torch.float32
    assert seen and set(seen) == {expected} and out.dtype == expected


def test_inference_gene_sum_in_cache_sized_blocks_is_identical(monkeypatch):
    """The CPU inference path gathers column blocks of the input genes' rows; it sums the same products in the
    same order as the one-pass sum used for training, so fp32 results are bit-identical."""
    import opencellplm.nn.embedding as embedding

    torch.manual_seed(0)
    table = torch.randn(300, 100)
    counts = torch.poisson(torch.rand(40, 120) * 1.5).to_sparse_csr()
    gene_index = torch.randperm(300)[:120]
    one_pass = log1p_gene_sum(counts, gene_index, table)  # grad enabled: the training path
    monkeypatch.setattr(embedding, "BLOCK_BYTES", 120 * 4 * 32)  # 32 columns per block: 4 blocks, the last short
    with torch.no_grad():
        blocked = log1p_gene_sum(counts, gene_index, table)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            blocked_bf16 = log1p_gene_sum(counts, gene_index, table)
    assert torch.equal(blocked, one_pass)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        monkeypatch.setattr(embedding, "BLOCK_BYTES", 2**30)  # one block
        whole_bf16 = log1p_gene_sum(counts, gene_index, table)
    assert blocked_bf16.dtype == torch.bfloat16 and torch.equal(blocked_bf16, whole_bf16)


def test_flow_attention_stays_float32_except_for_bf16_inference(monkeypatch):
    """Training and float16 keep the cell-wide flow sums in float32; bf16 inference runs them in bf16, close to fp32."""
    from opencellplm.nn.flowformer import FlowAttention

    torch.manual_seed(0)
    attention = FlowAttention(64, 4).eval()
    x = torch.randn(300, 64)
    seen = []
    flow = FlowAttention._flow
    monkeypatch.setattr(FlowAttention, "_flow", lambda self, q, k, v: seen.append(q.dtype) or flow(self, q, k, v))
    with torch.no_grad():
        exact = attention(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast = attention(x)
        with torch.autocast("cpu", dtype=torch.float16):
            attention(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        attention(x)  # gradients wanted
    assert seen == [torch.float32, torch.bfloat16, torch.float32, torch.float32]
    assert torch.nn.functional.cosine_similarity(fast.float(), exact, dim=1).min() > 0.9999


def test_depth_normalised_input_makes_a_cell_and_its_deeper_copy_one_token():
    """input_scaling='log1p_cp10k': the token depends on a cell's proportions, not its depth (official: depth)."""
    from opencellplm import ModelConfig
    from opencellplm.io import official_state_dict_from

    counts = torch.tensor([[1.0, 0.0, 3.0, 6.0], [2.0, 0.0, 6.0, 12.0], [0.0, 0.0, 0.0, 0.0]]).to_sparse_csr()
    gene_index = torch.tensor([4, 9, 20, 33])
    table = torch.randn(50, 8)
    raw = log1p_gene_sum(counts, gene_index, table)
    scaled = log1p_gene_sum(counts, gene_index, table, per_10k=True)
    assert not torch.allclose(raw[0], raw[1])
    torch.testing.assert_close(scaled[0], scaled[1])
    expected = torch.log1p(torch.tensor([1.0, 3.0, 6.0]) * 1e4 / 10) @ table[torch.tensor([4, 20, 33])]
    torch.testing.assert_close(scaled[0], expected)
    assert torch.equal(scaled[2], torch.zeros(8))  # a cell without counts stays a zero token
    config = ModelConfig(n_genes=50, hidden_dim=16, input_scaling="log1p_cp10k")
    assert ModelConfig.from_dict(config.to_dict()) == config
    module = CellPLMModule(config).eval()
    with torch.no_grad():  # the whole model: a cell alone and its 2x deeper copy alone get one embedding
        shallow, deep = (
            module.encode(CellBatch(counts=counts.to_dense()[[i]].to_sparse_csr(), gene_index=gene_index)).embedding
            for i in (0, 1)
        )
    torch.testing.assert_close(shallow, deep)
    with pytest.raises(ValueError, match="input_scaling='log1p_cp10k'"):
        official_state_dict_from(CellPLMModule(config))
    with pytest.raises(ValueError, match=r"input_scaling='raw' is not supported; choose one of \['log1p', "):
        ModelConfig(n_genes=50, hidden_dim=16, input_scaling="raw")


def test_the_backbone_carries_no_head_and_takes_a_token_shift(tiny_config):
    module = CellPLMModule(tiny_config).eval()
    batch = make_batch(covariates=False)
    assert module(batch).logits is None and not hasattr(module, "head")
    plain = module.encode(batch).embedding
    torch.testing.assert_close(module.encode(batch, token_shift=torch.zeros(tiny_config.hidden_dim)).embedding, plain)
    shifted = module.encode(batch, token_shift=torch.linspace(-1, 1, tiny_config.hidden_dim)).embedding
    assert not torch.allclose(shifted, plain)


def test_a_model_config_holding_a_head_is_refused_and_a_checkpoint_keeps_it_beside_the_config(tiny_config):
    from opencellplm.config import ConfigError, ModelConfig
    from opencellplm.module.annotation import build_module, module_config, read_module_config

    data = tiny_config.to_dict()
    assert ModelConfig.from_dict(data | {"annotation": None}) == tiny_config  # what every config.json held
    with pytest.raises(ConfigError, match="holds an annotation head, which is a task module's"):
        ModelConfig.from_dict(data | {"annotation": {"n_classes": 3}})
    head = AnnotationHeadConfig(n_classes=3)
    written = module_config(build_module(tiny_config, head))
    assert written["annotation"] == head.to_dict() and module_config(CellPLMModule(tiny_config))["annotation"] is None
    assert read_module_config(written) == (tiny_config, head)
    grown = build_module(tiny_config, head).with_extra_genes(2)
    assert isinstance(grown, AnnotationModule) and grown.head_config == head


def test_nb_parameters_at_their_own_genes_are_returned_without_a_copy_and_others_are_gathered():
    """The loss asks for the decoded genes in their order (no copy of the (N, G) matrices); any other rows are
    gathered, and rows that were not decoded are refused."""
    from opencellplm.module.outputs import NBOutput

    mean, dispersion = torch.rand(4, 3), torch.rand(4, 3)
    decoded = NBOutput(mean, dispersion, genes=torch.tensor([5, 2, 9]))
    same = decoded.at(torch.tensor([5, 2, 9]))
    assert same[0] is mean and same[1] is dispersion
    subset = decoded.at(torch.tensor([9, 5]))
    assert torch.equal(subset[0], mean[:, [2, 0]]) and torch.equal(subset[1], dispersion[:, [2, 0]])
    with pytest.raises(ValueError, match="decoded for other genes"):
        decoded.at(torch.tensor([5, 7]))
    whole = NBOutput(mean, dispersion)
    assert whole.at(torch.arange(3))[0] is mean
    assert torch.equal(whole.at(torch.tensor([2, 0]))[0], mean[:, [2, 0]])
