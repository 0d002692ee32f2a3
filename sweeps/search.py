"""The Optuna searcher, aware that a trial is a whole task sequence.

Ray's ``OptunaSearch`` tells Optuna a trial's *last* result, also when a scheduler (ASHA)
stopped it after its first tasks. In continual learning the metrics over the first tasks
are not comparable with those over the whole sequence (accuracy is usually higher, there is
less to forget), so such a trial would look better than it is. Here a trial that did not
complete its sequence is told as PRUNED: single-objective TPE still learns from its
per-task intermediate values, and no partial metric is ever taken for a final one.
"""

from __future__ import annotations

from typing import Any

from ray.tune.search.optuna import OptunaSearch

__all__ = ["SequenceOptunaSearch"]


class SequenceOptunaSearch(OptunaSearch):
    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        partial = result and result.get("tasks_completed") != result.get("num_tasks")
        if error or not partial or trial_id in self._completed_trials:
            super().on_trial_complete(trial_id, result, error)
            return
        from optuna.trial import TrialState

        self._ot_study.tell(self._ot_trials[trial_id], state=TrialState.PRUNED)
        self._completed_trials.add(trial_id)
