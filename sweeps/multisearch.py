"""A study's searcher and scheduler: several methods in one Tune experiment, each with its own budget.

:class:`MethodsSearch` holds one :class:`~sweeps.search.SequenceOptunaSearch` per method (its
own space and Optuna study, named ``SPEC-METHOD`` in ``SWEEP/optuna.db``, its default config
asked first) and hands each new trial to the method that has been given the fewest so far
(ties in the spec's order), until every method has had ``num_samples``. The methods share the
experiment's ``max_concurrent`` slots: a slot that frees up goes to whichever method still
has budget, so a method whose trials end early leaves no slot idle while others search, and
every method gets exactly ``num_samples`` trials. What a trial reports is routed to the
study of its method only: the samplers never see each other's values.

:class:`PerMethodScheduler` gives each method its own ASHA brackets. One ASHA over every
trial would rank a method's trials against the others' and stop a weaker method's trials
wholesale, so that method would train fewer tasks than the others: an unequal budget.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray.tune.schedulers import FIFOScheduler
from ray.tune.search import Searcher

__all__ = ["MethodsSearch", "PerMethodScheduler", "export_studies", "METHOD_KEY"]

#: the key of a study trial's config that names its method
METHOD_KEY = "method.name"


class MethodsSearch(Searcher):
    """Round-robin over per-method Optuna searchers (see the module docstring)."""

    def __init__(self, searchers: dict[str, Any], num_samples: int, *, metric: Any = None, mode: Any = None) -> None:
        super().__init__(metric=metric, mode=mode)
        self.searchers = dict(searchers)  # method -> SequenceOptunaSearch, in the spec's order
        self.num_samples = num_samples
        self.given = {m: 0 for m in self.searchers}  # trials handed to each method
        self.owner: dict[str, str] = {}  # Tune trial id -> method

    @classmethod
    def for_spec(cls, spec: Any, seed: int, mirror: Path | None) -> MethodsSearch:
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        from sweeps.phases import _param_space
        from sweeps.search import SequenceOptunaSearch, base_point
        from sweeps.study import method_spec

        multi = spec.searcher == "optuna-multi"
        metric = list(spec.metrics) if multi else spec.metrics[0]
        mode = list(spec.modes) if multi else spec.modes[0]
        searchers = {}
        for entry in spec.methods:
            sub = method_spec(spec, entry.name)
            searchers[entry.name] = SequenceOptunaSearch(
                space=OptunaSearch.convert_search_space(_param_space(sub, "search", {})),
                metric=metric,
                mode=mode,
                # seeded per method: a method's samples do not depend on which others are in the study
                sampler=optuna.samplers.TPESampler(seed=seed + _stable(entry.name), multivariate=True,
                                                   constant_liar=True),
                study_name=sub.name,
                base_point=base_point(sub)["point"] or None,
                mirror=mirror,
            )
        return cls(searchers, spec.num_samples, metric=metric, mode=mode)

    def set_search_properties(self, metric: Any, mode: Any, config: dict, **spec: Any) -> bool:
        return True  # each method's searcher has its space, metric and mode already

    def suggest(self, trial_id: str) -> dict | str | None:
        left = [m for m in self.searchers if self.given[m] < self.num_samples]
        if not left:
            return Searcher.FINISHED
        method = min(left, key=lambda m: self.given[m])  # min() keeps the first of equals: the spec's order
        params = self.searchers[method].suggest(trial_id)
        if params is None or params == Searcher.FINISHED:
            return params
        self.given[method] += 1
        self.owner[trial_id] = method
        return {METHOD_KEY: method, **params}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self.owner:
            self.searchers[self.owner[trial_id]].on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self.owner:
            self.searchers[self.owner[trial_id]].on_trial_complete(trial_id, result, error)

    # Tune pickles the searcher into its experiment snapshots (searcher-state-*.pkl) and restores from them
    def save(self, checkpoint_path: str) -> None:
        import pickle

        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__.copy(), f)

    def restore(self, checkpoint_path: str) -> None:
        import pickle

        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))


def _stable(name: str) -> int:
    """A small number of ``name``, the same in every process (``hash`` of a str is salted per process)."""
    import zlib

    return zlib.crc32(name.encode()) % 10_000


def export_studies(searchers: dict[str, Any], sweep_dir: Path) -> None:
    """Complete SWEEP/optuna.db with every ended trial of each method's study (see driver._export_study)."""
    from sweeps.search import tune_ids

    for searcher in searchers.values():
        mirror = searcher.study_mirror()
        if mirror is not None:
            mirror.flush()
            mirror.sync(searcher._ot_study, tune_ids(searcher))


class PerMethodScheduler(FIFOScheduler):
    """One scheduler (``make()``, e.g. ASHA) per method: a trial is compared with its own method's only."""

    def __init__(self, make: Callable[[], Any], *, metric: str, mode: str) -> None:
        super().__init__()
        self._make = make
        self._metric, self._mode = metric, mode
        self._by_method: dict[str, Any] = {}

    def _of(self, trial: Any) -> Any:
        method = str(trial.config.get(METHOD_KEY))
        if method not in self._by_method:
            self._by_method[method] = self._make()
        return self._by_method[method]

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return True  # each method's scheduler is made with the spec's metric and mode

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        self._of(trial).on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        return self._of(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        self._of(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        self._of(trial).on_trial_error(tune_controller, trial)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        self._of(trial).on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return "; ".join(f"{m}: {s.debug_string()}" for m, s in self._by_method.items()) or "no trials yet"
