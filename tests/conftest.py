"""Shared test fixtures: tiny configs and data, and the official reference fixtures' folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

from opencellplm import CellPLM, DecoderConfig, EncoderConfig, LatentConfig, ModelConfig
from opencellplm.testing import tiny_model
from opencellplm.testing.official_fixtures import FIXTURE_ENV, official_fixture_dir

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def official_dir() -> Path:
    """The official reference fixtures: they are in the repository, so a missing folder is a failure, not a skip."""
    folder = official_fixture_dir()
    if not folder.is_dir():
        pytest.fail(f"official reference fixtures not found at {folder} (tests/data/official, or {FIXTURE_ENV})")
    return folder


def vocabulary(n: int) -> list[str]:
    return [f"ENSG{i:011d}" for i in range(n)]


def small_model(genes: list[str], **kwargs) -> CellPLM:
    """A one-layer model over ``genes`` with seeded weights (0), for task tests; ``kwargs`` go to ``CellPLM``."""
    model = tiny_model(genes)
    return model if not kwargs else CellPLM(model.module, list(genes), **kwargs)


@pytest.fixture
def tiny_config() -> ModelConfig:
    return ModelConfig(
        n_genes=50,
        hidden_dim=16,
        dropout=0.1,
        encoder=EncoderConfig(n_layers=2, n_heads=4),
        latent=LatentConfig(dim=8, n_clusters=4, hidden_dim=12),
        decoder=DecoderConfig(hidden_dim=16, n_batches=3, n_datasets=2),
    )


@pytest.fixture
def tiny_adata() -> ad.AnnData:
    """40 cells x 30 genes of NB counts (25 in the tiny vocabulary, 5 not), two samples."""
    rng = np.random.default_rng(0)
    x = rng.negative_binomial(2, 0.5, size=(40, 30)).astype(np.float32)
    genes = vocabulary(25)[::-1] + [f"NOTAGENE{i}" for i in range(5)]
    obs = pd.DataFrame({"sample": np.repeat(["s2", "s1"], 20)}, index=[f"cell{i}" for i in range(40)])
    return ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=genes))


@pytest.fixture
def one_thread():
    """Torch on one thread for the test: on tiny matrices one thread is several times faster than two on a shared
    CPU (use with ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def held_elsewhere():
    """``hold(target)``: another process takes the output lock on ``target`` and keeps it until killed."""
    children = []

    def hold(target):
        code = (
            "import time; from opencellplm._files import output_lock\n"
            f"with output_lock({str(target)!r}):\n"
            "    print('locked', flush=True)\n"
            "    time.sleep(60)\n"
        )
        env = os.environ | {"PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
        child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
        children.append(child)
        assert child.stdout.readline().strip() == "locked"
        return child

    yield hold
    for child in children:
        child.kill()
        child.wait()
