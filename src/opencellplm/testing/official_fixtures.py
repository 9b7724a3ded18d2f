"""Replay reference outputs of the official CellPLM implementation through this package.

A fixture file (``NAME.pt``, loaded with ``weights_only=True``) holds an official config, a state
dict in official key layout, inputs, the official outputs and the GMVAE noise each forward drew.
:func:`compare_fixture` recognises the kind of fixture from its content, reruns it here with the
recorded noise injected, and returns the largest absolute difference of every output with the
size of the official value it was measured against.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..io.official import config_from_official, state_dict_from_official
from ..module import CellBatch, CellPLMModule, GMVAENoise
from ..module.annotation import build_module, classification_loss
from ..module.imputation import imputation_loss
from ..module.pretrain import reconstruction_loss
from ..nn.positional import sinusoid_table

#: Names another folder of reference fixtures than the repository's ``tests/data/official``.
FIXTURE_ENV = "OPENCELLPLM_OFFICIAL_FIXTURES"
#: The fixtures kept in the repository (a source checkout: ``src/opencellplm/testing`` -> repository root).
REPOSITORY_FIXTURES = Path(__file__).resolve().parents[3] / "tests" / "data" / "official"


def official_fixture_dir() -> Path:
    """``$OPENCELLPLM_OFFICIAL_FIXTURES`` when set, else the repository's ``tests/data/official``."""
    return Path(os.environ.get(FIXTURE_ENV) or REPOSITORY_FIXTURES)


@dataclass(frozen=True)
class Difference:
    """Largest absolute difference of one output of one case, and the largest absolute official value."""

    fixture: str
    case: str
    output: str
    max_abs_diff: float
    reference_scale: float = 0.0


def fixture_kind(fixture: dict[str, Any]) -> str:
    """``'decoder'``, ``'imputation'``, ``'pipeline'`` or ``'annotation'``, from the content."""
    config = fixture.get("config", {})
    if config.get("head_type") == "annotation":
        return "annotation"
    if config.get("head_type") == "embedder" and any("adata_X_dense" in str(k) for k in fixture.get("inputs", {})):
        return "pipeline"
    if config.get("head_type") is None and config.get("objective") == "imputation":
        return "imputation"
    if config.get("head_type") is None:
        return "decoder"
    raise ValueError(f"unrecognised official fixture (head_type={config.get('head_type')!r})")


def load_fixture(path: str | Path) -> dict[str, Any]:
    return torch.load(Path(path), map_location="cpu", weights_only=True)


def official_module(fixture: dict[str, Any], folder: Path) -> tuple[CellPLMModule, list[str]]:
    """Our module holding the fixture's weights, loaded through the strict official loader."""
    config, genes, head = config_from_official(fixture["config"])
    state, donor = fixture["state_dict"], fixture
    if isinstance(state, str):  # "identical to other.pt state_dict": weights shared with a sibling file
        match = re.search(r"([\w.-]+\.pt)", state)
        if match is None:
            raise ValueError(f"cannot tell where the fixture's state dict is: {state!r}")
        donor = load_fixture(folder / match.group(1))
        state = donor["state_dict"]
    state = dict(state)
    omitted = fixture.get("omitted_state_dict_key") or donor.get("omitted_state_dict_key")
    if omitted is not None:  # the fixed sinusoid table is left out of the files; regenerate and verify it
        rows, dim = omitted["shape"]
        table = sinusoid_table(dim, int(round(rows**0.5)))
        digest = hashlib.sha256(table.numpy().astype("<f4").tobytes()).hexdigest()
        if digest != omitted["sha256_float32_le_bytes"]:
            raise AssertionError(f"regenerated {omitted['key']} differs from the official table (sha256)")
        state[omitted["key"]] = table
    module = build_module(config, head)
    module.load_state_dict(state_dict_from_official(module, state), strict=True)
    return module.eval(), genes


def _noise(record: dict[str, torch.Tensor]) -> GMVAENoise:
    return GMVAENoise(gumbel_uniform=record["gumbel_uniform"], gaussian_eps=record["gaussian_eps"])


def _batch(inputs: dict[str, Any], genes: list[str]) -> CellBatch:
    x = inputs["x_dense"]
    gene_list = inputs.get("input_gene_list")
    position = {g: i for i, g in enumerate(genes)}
    gene_index = torch.arange(x.shape[1]) if gene_list is None else torch.tensor([position[g] for g in gene_list])
    return CellBatch(
        counts=x.to_sparse_csr(), gene_index=gene_index, batch=inputs.get("batch"), dataset=inputs.get("dataset")
    )


def _on(value: Any, device: torch.device) -> Any:
    return value.to(device) if isinstance(value, torch.Tensor) else value


def _diff(a: torch.Tensor | float, b: torch.Tensor | float) -> tuple[float, float]:
    """(largest absolute difference, largest absolute official value)."""
    a = torch.as_tensor(a).detach().cpu().to(torch.float64)
    b = torch.as_tensor(b).detach().cpu().to(torch.float64)
    if a.shape != b.shape:
        raise AssertionError(f"shape {tuple(a.shape)} differs from the official {tuple(b.shape)}")
    if not a.numel():
        return 0.0, 0.0
    return float((a - b).abs().max()), float(b.abs().max())


def _losses(loss, official_out: dict[str, Any], official_loss: float) -> dict[str, tuple[float, float]]:
    # The official target_loss is `float(total) - float(latent)`: compare the same arithmetic.
    total, latent = float(loss.total), float(loss.latent)
    return {
        "loss": _diff(total, official_loss),
        "latent_loss": _diff(latent, official_out["latent_loss"]),
        "target_loss": _diff(total - latent, official_out["target_loss"]),
    }


@torch.inference_mode()
def compare_fixture(path: str | Path, device: str | torch.device = "cpu") -> list[Difference]:
    """Rerun every case of an official fixture file on ``device`` (the fixtures were made on the CPU); one
    :class:`Difference` per case and output."""
    path = Path(path)
    device = torch.device(device)
    fixture = load_fixture(path)
    kind = fixture_kind(fixture)
    module, genes = official_module(fixture, path.parent)
    module.to(device)
    found: list[Difference] = []

    def record(case: str, diffs: dict[str, tuple[float, float]]) -> None:
        found.extend(Difference(path.stem, case, k, *v) for k, v in diffs.items())

    for case, result in fixture["results"].items():
        if kind == "pipeline":
            record(case, _compare_pipeline(module, genes, fixture["inputs"], case, result, device))
            continue
        inputs = fixture["inputs"][case]
        batch = _batch(inputs, genes).to(device)
        noise = result.get("gmvae_noise")
        out = module(batch, official=True, noise=_noise(noise[0]) if noise else None)
        official = result["out"]
        diffs = {"embedding": _diff(out.embedding, official["latent"])}
        if kind in ("decoder", "imputation"):
            diffs["nb_mean"] = _diff(out.nb.mean, official["mean"])
            diffs["nb_dispersion"] = _diff(out.nb.dispersion, official["disp"])
        if kind == "decoder":
            # The official loss reads decoder columns by input position (exact for full-width input).
            loss = reconstruction_loss(out, measured=_on(inputs["gene_mask"], device), alignment="position")
            diffs |= _losses(loss, official, result["loss"])
        elif kind == "imputation":
            loss = imputation_loss(out, measured=_on(inputs["gene_mask"], device))
            diffs["prediction"] = _diff(loss.prediction, official["pred"])
            diffs |= _losses(loss, official, result["loss"])
        elif kind == "annotation":
            mask = _on(inputs["loss_mask"], device)
            loss = classification_loss(out, _on(inputs["label"], device), mask=mask)
            diffs["logits"] = _diff(out.logits[mask], result["logits"])
            predicted = out.logits[mask].argmax(1).cpu()
            diffs["prediction_mismatches"] = (float((predicted != official["pred"]).sum()), 0.0)
            diffs |= _losses(loss, official, result["loss"])
        record(case, diffs)
    return found


def _compare_pipeline(
    module: CellPLMModule,
    genes: list[str],
    inputs: dict[str, Any],
    case: str,
    result: dict[str, Any],
    device: torch.device,
) -> dict[str, tuple[float, float]]:
    """The official CellEmbeddingPipeline: AnnData in, cells grouped by obs['batch'], optional chunks."""
    import anndata as ad
    import pandas as pd

    from ..data import align_genes
    from ..model import CellPLM

    match = re.fullmatch(r"batch_size_(\d+|all)", case)
    if match is None:
        raise ValueError(f"pipeline case {case!r} does not name its batch size (batch_size_N or batch_size_all)")
    max_cells = None if match.group(1) == "all" else int(match.group(1))
    adata = ad.AnnData(
        X=inputs["adata_X_dense"].numpy(),
        obs=pd.DataFrame({"batch": inputs["adata_obs_batch"]}, index=inputs["adata_obs_names"]),
        var=pd.DataFrame(index=inputs["adata_var_names"]),
    )
    kept = [inputs["adata_var_names"][j] for j in align_genes(adata.var_names, genes).columns]
    if kept != list(inputs["gene_list_after_filtering"]):
        raise AssertionError("the genes kept differ from the official pipeline's")
    model = CellPLM(module, genes, device=device)
    noise = [_noise(n) for n in result["forward_calls_gmvae_noise"]]
    embedding = model.get_latent_representation(
        adata, sample_key="batch", max_cells=max_cells, partition="consecutive", official_compat=True, noise=noise
    )
    return {"embedding": _diff(torch.from_numpy(np.asarray(embedding)), result["embedding"])}
