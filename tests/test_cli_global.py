"""The command line as a whole: each action's own options, --version, --threads, messages in flag names."""

from __future__ import annotations

import pytest

from opencellplm.cli import main


def help_text(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "-h"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


def test_each_annotate_and_perturb_action_lists_only_its_own_options(capsys):
    fit = help_text(capsys, "annotate", "fit")
    assert "--labels-key" in fit and "--steps" in fit and "--annotator" not in fit and "--key-added" not in fit
    predict = help_text(capsys, "annotate", "predict")
    assert "--annotator" in predict and "--key-added" in predict
    assert "--steps" not in predict and "--labels-key" not in predict and "--baselines" not in predict
    score = help_text(capsys, "annotate", "score")
    assert "--baselines" in score and "--reference" in score and "--scratch" not in score
    predict = help_text(capsys, "perturb", "predict")
    assert "--labels-file" in predict and "--seeds" not in predict and "--control" not in predict
    perturb_fit = help_text(capsys, "perturb", "fit")
    assert "--control" in perturb_fit and "--seeds" not in perturb_fit and "--labels-file" not in perturb_fit
    assert "--seeds" in help_text(capsys, "perturb", "score")


def test_an_option_of_another_action_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:  # --layer was silently ignored by predict: the annotator's is used
        main(["annotate", "predict", "x.h5ad", "--annotator", "A", "--out", "p.h5ad", "--layer", "counts"])
    assert exit_.value.code == 2 and "unrecognized arguments: --layer counts" in capsys.readouterr().err
