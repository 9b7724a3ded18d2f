"""Which state fine-tuning keeps: the best monitored score, ties broken by the objective's tie-breaking metric
(e.g. a macro F1 of 1.0 reached early on a few validation cells, while the validation loss still falls)."""

from __future__ import annotations

import torch
from torch import nn

from opencellplm.config import TrainConfig
from opencellplm.module.losses import LossOutput
from opencellplm.train import Distributed, Objective, Trainer


class Scripted(Objective):
    """Squared error of a linear map; evaluations return scripted scores and remember the weights they saw."""

    monitor, maximize, objective_name = "val_f1", True, "mse"

    def __init__(self, scores: list[tuple[float, float]], tiebreak: str | None):
        self.scores, self.tiebreak, self.seen = list(scores), tiebreak, []

    def global_batch(self, step):
        return [0]

    def loss(self, model, item, device, autocast):
        x = torch.ones(4, 2, device=device)
        error = ((model(x) - 1.0) ** 2).mean()
        return LossOutput(total=error, latent=torch.zeros((), device=device), objective=error), 4

    def evaluate(self, module, world, autocast):
        self.seen.append({k: v.clone() for k, v in module.state_dict().items()})
        f1, loss = self.scores.pop(0)
        return {"val_f1": f1, "val_loss": loss}


def fit(scores, tiebreak):
    torch.manual_seed(0)
    module = nn.Linear(2, 1)
    objective = Scripted(scores, tiebreak)
    config = TrainConfig(steps=len(scores), sets_per_step=1, lr=0.1, warmup_steps=0, eval_every=1, patience=2)
    summary = Trainer(module, objective, config, Distributed.start("cpu"), keep_best=True).fit()
    return module, objective, summary


# F1 reaches 1.0 at step 2 and stays there while the validation loss falls until step 4.
SCORES = [(0.5, 1.0), (1.0, 0.8), (1.0, 0.5), (1.0, 0.3), (1.0, 0.4), (1.0, 0.6)]


def test_ties_of_the_monitored_score_are_broken_by_the_validation_loss():
    module, objective, summary = fit(SCORES, "val_loss")
    assert summary.best_step == 4 and summary.best == 1.0
    assert summary.steps == 6 and summary.stopped_early  # patience 2: steps 5 and 6 did not improve
    for key, value in module.state_dict().items():
        torch.testing.assert_close(value, objective.seen[3][key])  # the weights evaluated at step 4


def test_without_a_tiebreak_the_first_best_state_is_kept():
    module, objective, summary = fit(SCORES[:4], None)
    assert summary.best_step == 2 and summary.stopped_early
    for key, value in module.state_dict().items():
        torch.testing.assert_close(value, objective.seen[1][key])


def test_a_better_score_wins_over_a_lower_loss():
    _, _, summary = fit([(0.5, 1.0), (0.9, 2.0), (0.8, 0.1)], "val_loss")
    assert summary.best_step == 2 and summary.best == 0.9


def compete(scores):
    """A run with ``compete_with_start``: the first scripted score is the starting weights'."""
    torch.manual_seed(0)
    module = nn.Linear(2, 1)
    start = {k: v.clone() for k, v in module.state_dict().items()}
    objective = Scripted(scores, "val_loss")
    config = TrainConfig(steps=len(scores) - 1, sets_per_step=1, lr=0.1, warmup_steps=0, eval_every=1, patience=0)
    summary = Trainer(module, objective, config, Distributed.start("cpu"), compete_with_start=True).fit()
    return module, start, objective, summary


def test_the_starting_weights_are_kept_when_fine_tuning_never_beats_them():
    module, start, _, summary = compete([(0.9, 0.5), (0.8, 0.1), (0.9, 0.4)])  # a tie on F1 does not beat it
    assert summary.kept == "start" and summary.start == 0.9 and summary.best == 0.9
    for key, value in module.state_dict().items():
        torch.testing.assert_close(value, start[key])
    assert summary.to_dict()["start_val_f1"] == 0.9 and summary.to_dict()["kept"] == "start"


def test_fine_tuned_weights_that_beat_the_start_are_kept():
    module, start, objective, summary = compete([(0.5, 0.5), (0.7, 0.4), (0.6, 0.3)])
    assert summary.kept == "fine-tuned" and summary.start == 0.5 and summary.best == 0.7 and summary.best_step == 1
    for key, value in module.state_dict().items():
        torch.testing.assert_close(value, objective.seen[1][key])  # evaluated at step 1 (seen[0] is the start)


def test_a_loss_s_own_metrics_reach_the_training_log(tmp_path):
    import json

    class Logged(Scripted):
        def global_batch(self, step):
            return [0, 0]

        def loss(self, model, item, device, autocast):
            out, cells = super().loss(model, item, device, autocast)
            return LossOutput(out.total, out.latent, out.objective, metrics={"share_kept": torch.tensor(0.25)}), cells

    torch.manual_seed(0)
    objective = Logged([(0.5, 1.0), (0.6, 0.9)], None)
    config = TrainConfig(steps=2, sets_per_step=2, lr=0.1, warmup_steps=0, eval_every=1, log_every=1)
    Trainer(nn.Linear(2, 1), objective, config, Distributed.start("cpu"), out=tmp_path / "run", keep_best=True).fit()
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [line["share_kept"] for line in lines] == [0.25, 0.25]  # summed over the step's two items, then averaged
    assert all(line["cells"] == 8 and "mse" in line and "latent_loss" in line for line in lines)


def test_a_run_folder_s_summary_says_which_weights_were_kept(tmp_path):
    import json

    torch.manual_seed(0)
    objective = Scripted([(0.9, 0.5), (0.8, 0.1), (0.7, 0.4)], "val_loss")
    config = TrainConfig(steps=2, sets_per_step=1, lr=0.1, warmup_steps=0, eval_every=1, patience=0)
    trainer = Trainer(
        nn.Linear(2, 1), objective, config, Distributed.start("cpu"), out=tmp_path / "run", compete_with_start=True
    )
    assert trainer.fit().kept == "start"
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["kept"] == "start" and summary["start_val_f1"] == 0.9 and summary["best_val_f1"] == 0.8
