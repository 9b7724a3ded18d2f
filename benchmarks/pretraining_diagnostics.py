"""What pretraining taught a model, step by step, beside the same architecture untrained.

Usage: python benchmarks/pretraining_diagnostics.py MODEL_OR_RUN [--seeds 5] [--json FILE] [--max-cells N]
           [--gene-id-rule upper]

MODEL_OR_RUN is a shipped model name, a checkpoint folder, or a pretraining run folder: a run trained with
``keep_steps`` (``scripts/pretrain_shipped_model.py`` keeps them) is scored at every saved step, from the
initial weights (step 0) on, and at its selected weights (``model/``). A run of the shipped recipe matches genes
by upper-cased symbols (its corpus did; the installed model records it, the run's weights do not): pass
``--gene-id-rule upper``.

On data never trained on (PBMC 68k reduced and the Baron et al. human pancreas, as in the benchmark), each model
gets:

- decoder dependence: the spread across cells of the decoded gene shares over the observed spread (ratio: 1 is
  as cell-specific as the data), and the mean per-gene Pearson r of decoded vs observed shares; beside them, a
  reference decoder that gives each cell its labelled cell type's mean observed profile (``cell_type_mean``, which
  also scores the masked-gene reconstruction: how far a decoder of cell state can get there);
- masked-gene reconstruction: 25% of each cell's non-zero counts hidden and predicted from the rest (zero-shot);
  RMSE and Pearson on the normalised log1p hidden entries with the gene levels fitted to the data (the
  denoiser's default), and the RMSE with the decoder's own gene levels, beside (a) each cell's library size times
  the data set's mean profile and (b) kNN smoothing over the visible counts;
- latent use: the loss rise when each cell is decoded from another cell's latent, active latent dimensions,
  the posterior mean's spread over the posterior noise, the mixture components used, the share of the latent's
  variance that follows sequencing depth;
- the pretraining loss split into its terms (NB on hidden entries, NB on visible entries, the masked-entry term,
  the Gaussian and categorical GMVAE terms before their floor, the latent loss after floors and weights);
- zero-shot clustering (Leiden on the embedding, mean of 3 seeds; best ARI/NMI over resolutions, ARI at resolution
  1.0 and at the NMI-chosen resolution), beside PCA;
- the selection probe of the shipped recipe: kNN label agreement on the Baron mouse pancreas cells of donor
  ``mouse2`` (the recipe's labelled validation, never in its corpus).

Every figure has an ``untrained`` row beside it: the same architecture with random weights, over ``--seeds``
initialisations (mean and standard deviation), so that "pretraining helps" is read against the spread of random
networks. Tables go to stdout (markdown); ``--json`` writes every number.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from opencellplm import CellPLM, datasets
from opencellplm.config import MaskingConfig
from opencellplm.data import InputSpec
from opencellplm.demo import untrained_copy
from opencellplm.metrics import denoising_scores, hide_counts, knn_label_agreement
from opencellplm.tasks import Denoiser
from opencellplm.tasks.clustering import score_clustering
from opencellplm.train import diagnostics
from opencellplm.train.trainer import STEPS_DIR

HIDDEN_FRACTION = 0.25
#: Leiden seeds of the clustering figures (their mean): one seed moves Baron human's best ARI by about 0.1.
LEIDEN_SEEDS = (0, 1, 2)
PROBE_DONOR = "mouse2"
#: Figures in the printed tables: (row key, header).
COLUMNS = (
    ("decoder_gene_r", "decoder r"),
    ("decoder_spread_ratio", "spread ratio"),
    ("masked_rmse", "hidden RMSE"),
    ("masked_pearson", "hidden r"),
    ("masked_rmse_model_levels", "hidden RMSE, model levels"),
    ("latent_swap_nll_increase", "swap +nats"),
    ("latent_active_dims", "active dims"),
    ("latent_signal_to_noise", "SNR"),
    ("latent_components_used", "components"),
    ("latent_depth_share", "depth share"),
    ("loss_nb_masked_entries", "NB hidden"),
    ("loss_nb_visible_entries", "NB visible"),
    ("loss_nb_masked_term", "NB term"),
    ("loss_gaussian", "Gauss KL"),
    ("loss_categorical", "cat KL"),
    ("loss_latent_loss", "latent loss"),
    ("clustering_ari_best", "ARI best"),
    ("clustering_nmi_best", "NMI best"),
    ("clustering_ari_fixed", "ARI res 1"),
    ("clustering_ari_at_nmi_choice", "ARI NMI-chosen"),
    ("probe_label_agreement", "probe"),
)


def _data(max_cells: int) -> dict:
    from opencellplm.benchmark.tasks import _subset

    out = {
        "pbmc68k_reduced": _subset(datasets.pbmc68k_reduced(), max_cells, stratify="cell_type"),
        "baron_human_pancreas": _subset(datasets.load_dataset("baron_human_pancreas"), max_cells, stratify="cell_type"),
    }
    mouse = datasets.load_dataset("baron_mouse_pancreas")
    probe = mouse[(mouse.obs["sample"] == PROBE_DONOR).to_numpy()].copy()
    return {"eval": out, "probe": probe}


def _models(source: str, gene_id_rule: str | None = None) -> list[tuple[str, CellPLM]]:
    """(label, model) for a checkpoint, or for every saved step of a run and its selected weights."""
    models = _load_models(source)
    if gene_id_rule is not None:
        for _, model in models:
            model.meta["gene_id_rule"] = gene_id_rule
    return models


def _load_models(source: str) -> list[tuple[str, CellPLM]]:
    path = Path(source)
    if (path / STEPS_DIR).is_dir():
        steps = sorted((path / STEPS_DIR).glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
        models = [(f"step {int(p.name.split('-')[1])}", CellPLM.from_pretrained(p)) for p in steps]
        if (path / "model").is_dir():
            selected = CellPLM.from_pretrained(path / "model")
            models.append((f"selected (step {selected.meta.get('step')})", selected))
        return models
    if (path / "model").is_dir() and not (path / "config.json").exists():
        path = path / "model"
    model = CellPLM.from_pretrained(source if not path.exists() else path)
    return [(model.meta.get("name") or str(source), model)]


def _masking(model: CellPLM) -> MaskingConfig:
    saved = model.meta.get("masking")
    return MaskingConfig(**saved) if isinstance(saved, dict) else MaskingConfig()


class Scorer:
    """Scores models on fixed data; the baselines of each data set are computed once."""

    def __init__(self, data: dict, seed: int = 0):
        self.data, self.seed = data, seed
        self.baselines: dict[str, dict] = {}

    def __call__(self, model: CellPLM) -> dict[str, dict[str, float]]:
        rows = {}
        for name, adata in self.data["eval"].items():
            row = diagnostics.as_row(
                decoder=diagnostics.decoder_dependence(model, adata, seed=self.seed),
                latent=diagnostics.latent_usage(model, adata, seed=self.seed),
                loss=diagnostics.loss_terms(model, adata, _masking(model), seed=self.seed),
            )
            row |= self._masked(name, model, adata) | self._clustering(name, model, adata)
            self._reference(name, model, adata)
            rows[name] = row
        embedding = model.get_latent_representation(self.data["probe"], precision="fp32")
        labels = self.data["probe"].obs["cell_type"].to_numpy()
        agreement = knn_label_agreement(embedding, labels, k=15)
        for row in rows.values():
            row["probe_label_agreement"] = agreement
        return rows

    def _reference(self, name: str, model: CellPLM, adata) -> None:
        if f"{name}:cell_type_mean" not in self.baselines:
            reference = diagnostics.label_mean_dependence(model, adata, "cell_type", seed=self.seed)
            self.baselines[f"{name}:cell_type_mean"] = {
                "decoder_gene_r": reference.gene_r,
                "decoder_spread_ratio": reference.spread_ratio,
            } | _cell_type_mean_hidden(model, adata, self.seed)

    def _masked(self, name: str, model: CellPLM, adata) -> dict[str, float]:
        first = name not in self.baselines
        result = Denoiser.from_pretrained(model).score(
            adata,
            protocol="hidden",
            fraction=HIDDEN_FRACTION,
            seed=self.seed,
            fine_tune=False,
            baselines=("mean_profile", "knn_smoothing") if first else (),
        )
        if first:
            self.baselines[name] = {
                m.method: {"rmse": m.scores["rmse"], "pearson": m.scores["pearson"]}
                for m in result.methods
                if not m.method.startswith("cellplm")
            }
        scores = result["cellplm_zero_shot"].scores
        own = (
            Denoiser.from_pretrained(model)
            .score(
                adata,
                protocol="hidden",
                fraction=HIDDEN_FRACTION,
                seed=self.seed,
                fine_tune=False,
                baselines=(),
                gene_levels="model",
            )["cellplm_zero_shot"]
            .scores
        )
        return {
            "masked_rmse": scores["rmse"],
            "masked_pearson": scores["pearson"],
            "masked_rmse_model_levels": own["rmse"],
        }

    def _clustering(self, name: str, model: CellPLM, adata) -> dict[str, float]:
        embedding = model.get_latent_representation(adata, precision="fp32")
        first = f"{name}:pca" not in self.baselines
        result = score_clustering(
            adata,
            "cell_type",
            embeddings={"model": embedding},
            embedding_key=None,
            baselines_run=("pca",) if first else (),
            seeds=LEIDEN_SEEDS,
        )

        def figures(per_seed) -> dict[str, float]:  # the mean over the Leiden seeds
            fields = {
                "clustering_ari_best": "best_ari",
                "clustering_nmi_best": "best_nmi",
                "clustering_ari_fixed": "ari_fixed",
                "clustering_ari_at_nmi_choice": "ari_at_nmi_choice",
            }
            return {key: float(np.mean([getattr(s, field) for s in per_seed])) for key, field in fields.items()}

        if first:
            self.baselines[f"{name}:pca"] = figures(result.scores["pca"])
        return figures(result.scores["model"])


def _cell_type_mean_hidden(model: CellPLM, adata, seed: int) -> dict[str, float]:
    """Masked-gene reconstruction by a predictor that knows each cell's labelled type: the type's mean profile of
    the corrupted counts at the cell's library size, on the entries the denoiser's protocol hides (same genes,
    fraction and seed). How far a decoder of cell state can get in this metric."""
    columns = model.cell_sets(adata, InputSpec()).report.alignment.columns
    counts = sp.csr_matrix(adata.X, dtype=np.float64)[:, columns]
    corrupted, hidden = hide_counts(counts, fraction=HIDDEN_FRACTION, seed=seed)
    dense = corrupted.toarray()
    library = dense.sum(1, keepdims=True)
    shares = np.divide(dense, library, out=np.zeros_like(dense), where=library > 0)
    labels = adata.obs["cell_type"].astype(str).to_numpy()
    prediction = np.zeros_like(dense)
    for label in np.unique(labels):
        cells = labels == label
        prediction[cells] = shares[cells].mean(0) * library[cells]
    scores = denoising_scores(counts, prediction, hidden)
    return {"masked_rmse": scores.rmse, "masked_pearson": scores.pearson}


def _summary(rows: list[dict[str, float]]) -> dict[str, tuple[float, float]]:
    keys = rows[0].keys()
    out = {}
    for key in keys:
        values = [r[key] for r in rows if isinstance(r[key], (int, float)) and r[key] is not None]
        if values:
            out[key] = (float(np.mean(values)), float(np.std(values)))
    return out


def _cell(value) -> str:
    if isinstance(value, tuple):
        return f"{value[0]:.3g} ± {value[1]:.2g}"
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _table(name: str, results: dict, untrained: dict, baselines: dict) -> str:
    header = "| model | " + " | ".join(h for _, h in COLUMNS) + " |"
    lines = [f"### {name}", "", header, "|" + "---|" * (len(COLUMNS) + 1)]
    for label, rows in results.items():
        lines.append(f"| {label} | " + " | ".join(_cell(rows[name].get(k)) for k, _ in COLUMNS) + " |")
    summary = untrained[name]
    lines.append("| untrained (mean ± sd) | " + " | ".join(_cell(summary.get(k)) for k, _ in COLUMNS) + " |")
    for method, scores in baselines.get(name, {}).items():
        cells = [_cell(scores.get(k.removeprefix("masked_"))) if k.startswith("masked_") else "-" for k, _ in COLUMNS]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    for method in ("cell_type_mean", "pca"):
        scores = baselines.get(f"{name}:{method}", {})
        lines.append(
            f"| {method} | " + " | ".join(_cell(scores.get(k)) if k in scores else "-" for k, _ in COLUMNS) + " |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", metavar="MODEL_OR_RUN", help="shipped model name, checkpoint folder or run folder")
    parser.add_argument("--seeds", type=int, default=5, help="untrained initialisations (default 5)")
    parser.add_argument("--max-cells", type=int, default=4000, help="cells per evaluation data set (default 4000)")
    parser.add_argument("--json", type=Path, help="write every figure to this JSON file")
    parser.add_argument(
        "--gene-id-rule",
        choices=["exact", "upper"],
        help="match genes by this rule instead of the checkpoint's ('upper' for runs of the shipped recipe)",
    )
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore")
    tic = time.perf_counter()
    models = _models(args.source, args.gene_id_rule)
    scorer = Scorer(_data(args.max_cells))
    results = {}
    for label, model in models:
        print(f"scoring {label} ...", file=sys.stderr)
        results[label] = scorer(model)
    untrained_rows = []
    for seed in range(args.seeds):
        print(f"scoring the untrained architecture, seed {seed} ...", file=sys.stderr)
        untrained_rows.append(scorer(untrained_copy(models[-1][1], seed)))
    names = list(scorer.data["eval"])
    untrained = {name: _summary([rows[name] for rows in untrained_rows]) for name in names}
    for name in names:
        print(_table(name, results, untrained, scorer.baselines) + "\n")
    print(f"({time.perf_counter() - tic:.0f} s)")
    if args.json:
        record = {
            "source": args.source,
            "hidden_fraction": HIDDEN_FRACTION,
            "results": results,
            "untrained": {name: {k: list(v) for k, v in summary.items()} for name, summary in untrained.items()},
            "untrained_seeds": list(range(args.seeds)),
            "baselines": scorer.baselines,
        }
        args.json.write_text(json.dumps(record, indent=1, default=lambda o: asdict(o)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
