"""launch: run a sweep where the compute is (``pah launch``).

- :mod:`launch.slurm`: one SLURM job through submitit, a Ray cluster across the
  allocation (:mod:`launch.cluster`), the sweep driver on its head; requeues resume.
- :mod:`launch.rayjob`: a Ray Job on any running Ray cluster (cloud, KubeRay, on-prem).
- :mod:`launch.entry`: what runs on the cluster; :mod:`launch.probe`: a one-minute check.
- ``templates/``: Ray cluster-launcher configs (AWS, GCP) and a KubeRay manifest.

Nothing here imports submitit or Ray at module level except :mod:`launch.slurm`, which
``pah launch`` imports only when it submits.
"""

from __future__ import annotations

__all__: list[str] = []
