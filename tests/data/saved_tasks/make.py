"""Write the saved tasks of tests/test_saved_task_formats.py: one tiny annotator, denoiser, imputer and perturbation
predictor, saved by the opencellplm that runs this script, with their predictions on fixed inputs
(``expected.npz``). They were written by the code before the task classes shared a base (commit daec56a), so the
test proves that today's code still loads what earlier versions saved. Run from the repository root:

    python tests/data/saved_tasks/make.py tests/data/saved_tasks
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from opencellplm import CellPLM, CellPLMModule, DecoderConfig, EncoderConfig, LatentConfig, ModelConfig
from opencellplm.datasets.perturbseq_simulator import simulate_perturbseq
from opencellplm.tasks import CellTypeAnnotator, Denoiser, PerturbationPredictor
from opencellplm.tasks.annotation import AnnotationRecipe
from opencellplm.tasks.denoising import DenoisingRecipe
from opencellplm.tasks.imputation import ImputationRecipe, SpatialImputer
from opencellplm.tasks.perturbation import PerturbationRecipe
from opencellplm.testing.synthetic import synthetic_adata

VOCABULARY = [f"G{i}" for i in range(80)]


def tiny_model() -> CellPLM:
    config = ModelConfig(
        n_genes=len(VOCABULARY),
        hidden_dim=16,
        dropout=0.1,
        positional_encoding="sinusoidal",
        encoder=EncoderConfig(n_layers=1, n_heads=4),
        latent=LatentConfig(dim=8, n_clusters=4, hidden_dim=12),
        decoder=DecoderConfig(hidden_dim=16, n_batches=3, n_datasets=2),
    )
    torch.manual_seed(0)
    return CellPLM(CellPLMModule(config), VOCABULARY)


def inputs() -> dict:
    """The data every saved task is fitted on and predicts (seeded, so the test rebuilds them)."""
    cells = synthetic_adata(120, 60, gene_names=VOCABULARY[:60], seed=3)
    reference = synthetic_adata(120, 60, gene_names=VOCABULARY[:60], seed=1)
    spatial = synthetic_adata(100, 60, gene_names=VOCABULARY[:60], spatial=True, seed=2)[:, :25].copy()
    perturb = simulate_perturbseq(
        60,
        gene_names=VOCABULARY[:60],
        n_regulators=8,
        n_single=6,
        n_combo=2,
        cells_per_perturbation=10,
        n_control=32,
        seed=0,
    )
    return {"cells": cells, "reference": reference, "spatial": spatial, "perturb": perturb}


def predictions(annotator, denoiser, imputer, predictor, data) -> dict[str, np.ndarray]:
    labels = list(dict.fromkeys(data["perturb"].obs["perturbation"]))[:4]
    return {
        "annotation_probabilities": annotator.get_predictions(data["cells"]).probabilities,
        "denoised": denoiser.get_denoised(data["cells"]),
        "imputed": imputer.impute(data["spatial"]).to_numpy(),
        "perturbation": predictor.predict(labels).to_numpy(),
    }


def main(out: Path) -> None:
    torch.set_num_threads(1)
    data = inputs()
    model = tiny_model()
    annotator = CellTypeAnnotator.from_pretrained(
        model, recipe=AnnotationRecipe(steps=6, eval_every=2, warmup_steps=1, precision="fp32")
    ).fit(data["cells"], "cell_type")
    denoiser = Denoiser.from_pretrained(
        model, recipe=DenoisingRecipe(steps=4, eval_every=2, warmup_steps=1, lr=5e-3, precision="fp32")
    ).fit(data["cells"])
    imputer = SpatialImputer.from_pretrained(
        model, recipe=ImputationRecipe(steps=4, eval_every=2, warmup_steps=1, max_cells=60, precision="fp32")
    ).fit(data["spatial"], data["reference"])
    predictor = PerturbationPredictor.from_pretrained(
        model, recipe=PerturbationRecipe(steps=6, eval_every=2, lr=3e-2, max_cells=16, patience=0, precision="fp32")
    ).fit(data["perturb"])
    tasks = {"annotator": annotator, "denoiser": denoiser, "imputer": imputer, "predictor": predictor}
    for name, task in tasks.items():
        task.save(out / name, overwrite=True)
    np.savez(out / "expected.npz", **predictions(annotator, denoiser, imputer, predictor, data))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
