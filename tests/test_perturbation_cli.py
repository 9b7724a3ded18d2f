"""``opencellplm perturb fit|predict|score``: files written, one-line errors with exit status 2, --overwrite."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
import torch

from opencellplm._files import attribute_mark_problems
from opencellplm.cli import main
from opencellplm.tasks import PerturbationPredictor

from .test_perturbation import VOCABULARY, simulated, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("perturb")
    tiny_model().save(folder / "ckpt")
    simulated(n_single=8, n_combo=6, cells_per_perturbation=10).write_h5ad(folder / "data.h5ad")
    return folder


def errors(caplog) -> list[str]:
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    caplog.clear()
    return lines


def test_fit_predict_score(files, capsys, caplog):
    fit = ["perturb", "fit", str(files / "data.h5ad"), "--checkpoint", str(files / "ckpt"), "--steps", "2"]
    assert main([*fit, "--out", str(files / "predictor")]) == 0
    assert (files / "predictor" / "perturbation.json").is_file()
    with caplog.at_level(logging.ERROR):
        assert main([*fit, "--out", str(files / "predictor")]) == 2  # exists
    assert any("--overwrite" in line for line in errors(caplog))
    assert main([*fit, "--out", str(files / "predictor"), "--overwrite"]) == 0

    out = files / "prediction.csv"
    assert (
        main(["perturb", "predict", str(files / "predictor"), "--labels", "GENE3+GENE7", "GENE9:up", "--out", str(out)])
        == 0
    )
    table = pd.read_csv(out, index_col=0)
    assert list(table.index) == ["GENE3+GENE7", "GENE9:up"] and table.shape[1] == 60
    (files / "labels.txt").write_text("GENE4\nctrl\n")
    out2 = files / "prediction2.csv"
    assert (
        main(
            [
                "perturb",
                "predict",
                str(files / "predictor"),
                "--labels-file",
                str(files / "labels.txt"),
                "--out",
                str(out2),
            ]
        )
        == 0
    )
    assert list(pd.read_csv(out2, index_col=0).index) == ["GENE4", "ctrl"]
    # --overwrite replaces the table it wrote (marked), never the user's table of the same shape
    again = ["perturb", "predict", str(files / "predictor"), "--labels", "GENE4", "--overwrite", "--out"]
    if not attribute_mark_problems(out2):  # marked (where the file system takes extended attributes)
        assert main([*again, str(out2)]) == 0 and list(pd.read_csv(out2, index_col=0).index) == ["GENE4"]
    (files / "truth.csv").write_bytes(out2.read_bytes())  # a plain copy: no mark
    with caplog.at_level(logging.ERROR):
        assert main([*again, str(files / "truth.csv")]) == 2
    assert "not a marked opencellplm output" in errors(caplog)[0]

    result = files / "result.json"
    score = ["perturb", "score", str(files / "data.h5ad"), "--checkpoint", str(files / "ckpt"), "--steps", "2"]
    assert main([*score, "--seeds", "0", "--out", str(result)]) == 0
    printed = capsys.readouterr().out
    assert "simulated" in printed and "additive" in printed and "single_unseen" in printed
    saved = json.loads(result.read_text())
    assert saved["simulated"] is True and saved["seeds"] == [0]


def test_cells_without_a_label_are_left_out_not_a_gene_called_nan(files, caplog):
    data = simulated(n_single=8, n_combo=6, cells_per_perturbation=10)
    labels = data.obs["perturbation"].astype(str).to_numpy().astype(object)
    labels[np.r_[np.flatnonzero(labels == "ctrl")[:12], np.flatnonzero(labels != "ctrl")[:13]]] = np.nan
    data.obs["perturbation"] = pd.Categorical(labels)
    data.write_h5ad(files / "nanlab.h5ad")
    fit = ["perturb", "fit", str(files / "nanlab.h5ad"), "--checkpoint", str(files / "ckpt"), "--steps", "2"]
    with caplog.at_level(logging.WARNING):
        assert main([*fit, "--extend-vocabulary", "--out", str(files / "nanlab")]) == 0
    assert "25 of" in caplog.text and "cells have no perturbation label" in caplog.text
    saved = json.loads((files / "nanlab" / "perturbation.json").read_text())
    assert saved["fit"]["n_unlabelled_cells"] == 25
    assert saved["fit"]["n_control_cells"] == int((data.obs["perturbation"] == "ctrl").sum())
    assert "nan" not in PerturbationPredictor.load(files / "nanlab").base.genes
    assert main([*fit, "--out", str(files / "nanlab2")]) == 0  # without the flag: no "unknown gene 'nan'" either


class Payload:
    """Pickled, it would write a file when unpickled."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_pickle_payload_in_the_state_is_refused_as_untrusted_naming_the_file(files, caplog):
    fit = ["perturb", "fit", str(files / "data.h5ad"), "--checkpoint", str(files / "ckpt"), "--steps", "2"]
    assert main([*fit, "--out", str(files / "pickled")]) == 0
    state = files / "pickled" / "perturbation_state.pt"
    torch.save({"network": Payload(files / "ran.txt")}, state)
    caplog.set_level(logging.ERROR)
    out = files / "pickled.csv"
    predict = ["perturb", "predict", str(files / "pickled"), "--labels", "GENE3", "--out", str(out)]
    assert main(predict) == 2  # the checksum recorded at save time catches the change first
    assert errors(caplog)[0].startswith(f"{state} was changed after the perturbation predictor was saved")
    assert not (files / "ran.txt").exists() and not out.exists()
    # A folder saved before checksums (or with them removed) reaches the loader's own refusal of pickles.
    settings = files / "pickled" / "perturbation.json"
    settings.write_text(json.dumps({k: v for k, v in json.loads(settings.read_text()).items() if k != "sha256"}))
    caplog.clear()
    with pytest.warns(UserWarning, match="records no checksums"):
        assert main(predict) == 2
    (message,) = errors(caplog)
    assert message.startswith(f"{state} is not trusted: it holds pickled objects other than tensors (it calls io.open)")
    assert "weights_only" not in message and "\n" not in message
    assert not (files / "ran.txt").exists() and not out.exists()  # the payload never ran
    state.write_bytes(b"not a torch file")
    with pytest.warns(UserWarning, match="records no checksums"):
        assert main(predict) == 2
    assert errors(caplog)[0] == f"cannot read {state} as a perturbation predictor's state: it is not a torch file"
    torch.save({"network": {}}, state)
    with pytest.warns(UserWarning, match="records no checksums"):
        assert main(predict) == 2
    assert errors(caplog)[0].startswith(f"{state} is not a perturbation predictor's state: it lacks ['gene_index',")


def test_bad_input_is_one_line_with_status_2(files, caplog):
    caplog.set_level(logging.ERROR)
    predictor = files / "not-there"
    assert main(["perturb", "predict", str(predictor), "--labels", "GENE3", "--out", str(files / "x.csv")]) == 2
    assert "not found" in errors(caplog)[0]
    assert main(["perturb", "fit", str(files / "missing.h5ad"), "--out", str(files / "p2")]) == 2
    assert "input file not found" in errors(caplog)[0]
    assert not (files / "p2").exists()
    fit = ["perturb", "fit", str(files / "data.h5ad"), "--checkpoint", str(files / "ckpt"), "--steps", "2"]
    assert main([*fit, "--control", "untreated", "--out", str(files / "p3")]) == 2
    (message,) = errors(caplog)
    assert "no control cells" in message and "'untreated'" in message and "\n" not in message
    assert not (files / "p3").exists()
    assert main([*fit, "--perturbation-key", "guide", "--out", str(files / "p4")]) == 2
    assert "'guide'" in errors(caplog)[0]
    assert main([*fit, "--out", str(files / "p5")]) == 0
    inside = ["perturb", "predict", str(files / "p5"), "--labels", "GENE3", "--out", str(files / "p5" / "x.csv")]
    assert main(inside) == 2
    assert "lies inside" in errors(caplog)[0] and not (files / "p5" / "x.csv").exists()
    assert VOCABULARY  # the tiny vocabulary the checkpoint was saved with
