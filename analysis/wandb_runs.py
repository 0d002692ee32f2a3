"""Read results from W&B runs (``--wandb ENTITY/PROJECT``) through its public API.

A run counts when it carries a contract ``result.json``: as an uploaded run file, or as
the run summary's ``result`` entry, or as summary keys of the same names. Everything
else about a run is ignored. Needs the network and the ``wandb`` package.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

from pah.errors import UserError

__all__ = ["wandb_results"]


def _from_run(run: Any, tmp: Path) -> Any:
    try:
        f = run.file("result.json")
        if getattr(f, "size", 0):
            path = f.download(root=str(tmp / run.id), replace=True).name
            return json.loads(Path(path).read_text())
    except Exception:  # no such file on this run: fall back to the summary
        pass
    summary = dict(run.summary or {})
    if isinstance(summary.get("result"), dict):
        return summary["result"]
    if "acc_matrix" in summary:
        return {k: summary[k] for k in summary if not k.startswith("_")}
    return None


def wandb_results(project: str) -> list[tuple[str, Any]]:
    """(``wandb:ENTITY/PROJECT/RUN``, result object) for every run of ``project`` that has one."""
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", project):
        raise UserError(f"--wandb {project!r}: expected ENTITY/PROJECT")
    try:
        import wandb
    except ImportError as e:
        raise UserError("--wandb needs the wandb package: pip install 'pah[sweep]'") from e
    api = wandb.Api()
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for run in api.runs(project):
            obj = _from_run(run, Path(tmp))
            if obj is not None:
                out.append((f"wandb:{project}/{run.id}", obj))
    return out
