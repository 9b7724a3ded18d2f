"""Tasks saved by earlier versions still load and predict what they predicted when saved.

``tests/data/saved_tasks`` holds a tiny annotator, denoiser, imputer and perturbation predictor written by the code
before the task classes shared a base (commit daec56a, by ``tests/data/saved_tasks/make.py``), with their
predictions on seeded inputs. A change to the save format, the settings or the module layout that breaks them
fails here.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from opencellplm.tasks import CellTypeAnnotator, Denoiser, PerturbationPredictor
from opencellplm.tasks.imputation import SpatialImputer

SAVED = Path(__file__).parent / "data" / "saved_tasks"


@pytest.fixture(scope="module")
def made():
    spec = importlib.util.spec_from_file_location("make_saved_tasks", SAVED / "make.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def data(made):
    return made.inputs()


@pytest.fixture(scope="module")
def expected():
    return dict(np.load(SAVED / "expected.npz"))


pytestmark = pytest.mark.usefixtures("one_thread")


def loaded(made, data):
    return (
        CellTypeAnnotator.load(SAVED / "annotator"),
        Denoiser.load(SAVED / "denoiser"),
        SpatialImputer.load(SAVED / "imputer"),
        PerturbationPredictor.load(SAVED / "predictor"),
    )


def test_tasks_saved_before_the_shared_base_load_and_predict_as_they_did(made, data, expected):
    annotator, denoiser, imputer, predictor = loaded(made, data)
    assert annotator.fitted and denoiser.fitted and imputer.fitted and predictor.fitted
    assert annotator.classes and predictor.summary is not None and imputer.summary is not None
    now = made.predictions(annotator, denoiser, imputer, predictor, data)
    assert set(now) == set(expected)
    for name, values in expected.items():
        np.testing.assert_allclose(now[name], values, rtol=1e-5, atol=1e-6, err_msg=name)


def test_a_loaded_task_saves_again_and_reloads_the_same(made, data, expected, tmp_path):
    tasks = loaded(made, data)
    again = [type(task).load(task.save(tmp_path / type(task).__name__)) for task in tasks]
    now = made.predictions(*again, data)
    for name, values in expected.items():
        np.testing.assert_allclose(now[name], values, rtol=1e-5, atol=1e-6, err_msg=name)


def test_info_describes_a_saved_annotator_s_head(capsys):
    import json

    from opencellplm.cli import main

    assert main(["info", str(SAVED / "annotator" / "model")]) == 0
    config = json.loads(capsys.readouterr().out)["config"]
    assert config["annotation"]["n_classes"] == len(CellTypeAnnotator.load(SAVED / "annotator").classes)
    assert config["decoder"] is None and config["latent"]["kind"] == "ae"
