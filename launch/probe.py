"""A smoke test for a launched cluster: a tiny Ray Tune run, one 1-CPU trial per CPU slot.

``pah launch slurm --probe`` (or ``pah launch ray --probe``) runs this instead of a sweep,
so a user checks in a minute that the allocation, the Ray cluster across it and the
shared storage all work before queueing a days-long sweep. It writes ``probe.json`` in
the run folder: the cluster's nodes and resources and which node each trial ran on.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from launch.cluster import write_json
from pah import signals

__all__ = ["probe"]


def _trial(config: dict) -> None:
    import ray
    from ray import tune

    time.sleep(config["seconds"])  # long enough that the trials overlap and spread over nodes
    tune.report({"node_id": ray.get_runtime_context().get_node_id(), "host": socket.gethostname(),
                 "pid": os.getpid(), "i": config["i"]})


def probe(*, storage: str, name: str, address: str | None = None, trials: int | None = None,
          seconds: float = 3.0, **_: object) -> Path:
    import ray
    from ray import tune

    out = Path(storage) / name
    out.mkdir(parents=True, exist_ok=True)
    print(f"sweep: {out}", flush=True)
    ray.init(address=address, logging_level="WARNING")
    try:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        cpus = int(ray.cluster_resources().get("CPU", 1))
        n = trials or max(1, cpus)
        tuner = tune.Tuner(
            tune.with_resources(_trial, {"cpu": 1}),
            param_space={"i": tune.grid_search(list(range(n))), "seconds": seconds},
            run_config=tune.RunConfig(storage_path=str(out.resolve()), name="probe", verbose=0),
        )
        results = tuner.fit()
        rows = [r.metrics for r in results]
        errors = [str(r.error) for r in results if r.error]
        summary = {
            "nodes": len(nodes),
            "resources": ray.cluster_resources(),
            "trials": [{k: m.get(k) for k in ("i", "node_id", "host", "pid")} for m in rows],
            "trial_nodes": len({m.get("node_id") for m in rows if m.get("node_id")}),
            "errors": errors,
        }
    finally:
        with signals.kept():  # Ray resets SIGTERM to its default action
            ray.shutdown()
    write_json(out / "probe.json", summary)
    print(f"probe: {summary['nodes']} Ray node(s), trials ran on {summary['trial_nodes']}, "
          f"{len(errors)} error(s)", flush=True)
    if errors:
        raise RuntimeError(f"probe trials failed: {errors[0]}")
    return out
