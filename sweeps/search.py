"""The Optuna searcher, aware that a trial is a whole task sequence, and the base config as a candidate.

Ray's ``OptunaSearch`` tells Optuna a trial's *last* result, also when a scheduler (ASHA)
stopped it after its first tasks. In continual learning the metrics over the first tasks
are not comparable with those over the whole sequence (accuracy is usually higher, there is
less to forget), so such a trial would look better than it is. Here a trial that did not
complete its sequence is told as PRUNED: single-objective TPE still learns from its
per-task intermediate values, and no partial metric is ever taken for a final one.

A sweep must never lose to not sweeping: the spec's base config (the preset plus ``set``)
is the search phase's first trial. ``base_point`` gives its values for the searched keys;
keys whose base value lies outside the space are left to the sampler (that first trial is
then the base only in the other keys; the confirm phase runs the exact base config anyway).
"""

from __future__ import annotations

from typing import Any

from ray.tune.search.optuna import OptunaSearch

__all__ = ["SequenceOptunaSearch", "base_point", "in_space"]


def in_space(value: Any, kind: str, args: tuple[Any, ...]) -> bool:
    """Whether ``value`` can be drawn from the distribution ``{kind: args}`` of a spec's space."""
    if isinstance(value, bool) or value is None:
        return kind == "choice" and any(type(a) is type(value) and a == value for a in args)
    if kind == "choice":
        return any(not isinstance(a, bool) and type(a) in (type(value), int, float) and a == value for a in args)
    if not isinstance(value, (int, float)):
        return False
    if kind == "int" and not float(value).is_integer():
        return False
    return args[0] <= value <= args[1]


def base_point(spec) -> dict[str, Any]:
    """The base config of ``spec`` as seen by the search: ``{"config_id", "values", "point", "outside"}``.

    ``values``: the base's value of every searched key; ``point``: those that lie in the
    space (what the first trial takes); ``outside``: the keys whose base value does not.
    """
    from pah.config import config_id, flatten

    cfg = spec.trial_config()
    flat = flatten(cfg.to_dict())
    values = {k: flat.get(k) for k in spec.space}
    point = {k: v for k, v in values.items() if in_space(v, spec.space[k].kind, spec.space[k].args)}
    return {"config_id": config_id(cfg), "values": values, "point": point,
            "outside": [k for k in spec.space if k not in point]}


class SequenceOptunaSearch(OptunaSearch):
    """OptunaSearch that tells partial sequences as PRUNED and asks for ``base_point`` first."""

    base_point: dict[str, Any] | None = None  # for searchers pickled by an older version

    def __init__(self, *args: Any, base_point: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self.base_point = dict(base_point) if base_point else None
        super().__init__(*args, **kwargs)

    def _setup_study(self, mode: str | list[str]) -> None:
        super()._setup_study(mode)
        # Ray's points_to_evaluate wants every key; Optuna takes a partial point and samples the rest.
        # On a restore the study is replaced by the saved one right after this, so nothing is asked twice.
        if self.base_point and not self._ot_study.trials:
            self._ot_study.enqueue_trial(self.base_point, user_attrs={"pah_base_config": True})

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        partial = result and result.get("tasks_completed") != result.get("num_tasks")
        if error or not partial or trial_id in self._completed_trials:
            super().on_trial_complete(trial_id, result, error)
            return
        from optuna.trial import TrialState

        self._ot_study.tell(self._ot_trials[trial_id], state=TrialState.PRUNED)
        self._completed_trials.add(trial_id)
