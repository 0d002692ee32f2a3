"""Any running Ray cluster (cloud, KubeRay, on-prem) through Ray Jobs.

The sweep driver runs as a Ray Job on the cluster's head. The job's runtime environment
carries this package's code (``py_modules``: the submitter's version, whatever the
cluster has installed), a local spec file (``working_dir``) and the environment
variables the project honours. Secrets are not forwarded: set ``WANDB_API_KEY`` on the
cluster itself (runtime environments are stored in the cluster's GCS and shown in its
dashboard).
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pah.errors import UserError

__all__ = ["runtime_env", "submit", "follow", "status", "cancel"]

PACKAGES = ("pah", "sweeps", "launch", "analysis")
FORWARDED_ENV = ("WANDB_MODE", "WANDB_PROJECT", "PAH_DATA_DIR")
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
#: seconds `ray job stop` (and `pah launch cancel`) leaves the driver between its SIGTERM and a SIGKILL.
#: Ray's default is 3 s, too short for a driver to stop its trials gracefully (their last task checkpoint
#: kept, every ended trial in optuna.db and W&B) on a busy head; the driver's graceful stop takes
#: seconds, and a SIGKILL after this costs no more than the task in progress. ``--env
#: RAY_JOB_STOP_WAIT_TIME_S=N`` sets another.
STOP_WAIT_S = 60
# how long --address may take to answer its version check before the launch fails (Ray waits for ever)
CONNECT_TIMEOUT_S = 15
#: seconds a followed job's cluster may not answer before `pah launch ray` reports it lost (the job's
#: sweep is in its --storage: a new cluster resumes it); PAH_LOST_CLUSTER_S sets another
LOST_CLUSTER_S = float(os.environ.get("PAH_LOST_CLUSTER_S", 60))


def runtime_env(*, working_dir: Path | None, env: dict[str, str], pip: list[str]) -> dict[str, Any]:
    import os

    modules = []
    for pkg in PACKAGES:
        try:
            modules.append(str(Path(importlib.import_module(pkg).__file__).parent))
        except ImportError:  # an optional package not in this build
            continue
    env_vars = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
    env_vars.setdefault("WANDB_MODE", "offline")
    env_vars["RAY_USAGE_STATS_ENABLED"] = "0"
    env_vars["RAY_JOB_STOP_WAIT_TIME_S"] = str(STOP_WAIT_S)  # read by the job's supervisor on the head
    env_vars.update(env)
    renv: dict[str, Any] = {"py_modules": modules, "env_vars": env_vars,
                            "excludes": ["__pycache__", "*.pyc"]}
    if working_dir is not None:
        renv["working_dir"] = str(working_dir)
    if pip:
        renv["pip"] = list(pip)
    return renv


def _preflight(address: str, timeout: float | None = None) -> None:
    """Fail fast, in one line, where Ray's client would not: a server that accepts the connection and
    never answers (Ray's version check has no timeout: it hangs for ever), or one that answers but is
    no Ray dashboard. A dashboard that asks for credentials (401/403) is left to Ray's client."""
    import urllib.error
    import urllib.request

    timeout = CONNECT_TIMEOUT_S if timeout is None else timeout
    url = address.rstrip("/") + "/api/version"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            body = resp.read(65536)
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            return
        raise UserError(f"{address} is not a Ray dashboard: GET /api/version answered HTTP {e.code}") from None
    except TimeoutError:
        raise UserError(f"cannot reach a Ray cluster at {address}: no answer within {timeout:.0f} s") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        if isinstance(reason, TimeoutError):
            raise UserError(f"cannot reach a Ray cluster at {address}: no answer within {timeout:.0f} s") from None
        raise UserError(f"cannot reach a Ray cluster at {address}: {reason}") from None
    try:
        ok = "ray_version" in json.loads(body)
    except (ValueError, TypeError):
        ok = False
    if not ok:
        raise UserError(f"{address} is not a Ray dashboard: GET /api/version gave no Ray version")


def _client(address: str):
    if not address.startswith(("http://", "https://")):
        raise UserError(f"--address must be the dashboard URL, like http://HOST:8265, got {address!r}")
    _preflight(address)
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except Exception as e:  # connection refused, wrong port, not a Ray dashboard
        raise UserError(f"cannot reach a Ray cluster at {address}: {str(e).splitlines()[0]}") from None


def submit(*, address: str, spec: str | None, overrides: list[str], storage: str, name: str, probe: bool,
           env: dict[str, str], pip: list[str]) -> str:
    """Submit the job; returns its submission id."""
    client = _client(address)
    staging = None
    args = ["--storage", storage, "--name", name]
    if probe:
        args.append("--probe")
    elif Path(spec).is_file():  # a local spec travels with the job as its working_dir
        staging = Path(tempfile.mkdtemp(prefix="pah-rayjob-"))
        shutil.copy(spec, staging / Path(spec).name)
        args.insert(0, Path(spec).name)
    else:
        args.insert(0, spec)
    for o in overrides:
        args += ["--set", o]
    # `~` in storage expands on the cluster (the entrypoint runs in a shell there)
    entry = "python -u -m launch.entry " + " ".join(
        a if a.startswith("~/") else shlex.quote(a) for a in args)
    try:
        return client.submit_job(entrypoint=entry, runtime_env=runtime_env(working_dir=staging, env=env, pip=pip),
                                 submission_id=None, metadata={"pah_sweep": name})
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


def follow(address: str, job_id: str, lost_after: float | None = None) -> str:
    """Stream the job's logs until it ends; returns its final status, or ``LOST``: the cluster did not
    answer for ``lost_after`` seconds (``LOST_CLUSTER_S``) once the log stream broke (its head node
    gone, or cut off from here). Shorter outages of the dashboard are waited out."""
    lost_after = LOST_CLUSTER_S if lost_after is None else lost_after
    client = _client(address)

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            sys.stdout.write(chunk)
            sys.stdout.flush()

    try:
        asyncio.run(tail())
    except Exception:  # noqa: BLE001 - the stream broke (the head went away?): the status says more
        pass
    # the log stream closes as the job ends; its status follows a moment later
    deadline = time.monotonic() + 60
    silent_since = None
    while True:
        try:
            state = str(client.get_job_status(job_id)).split(".")[-1]
            silent_since = None
        except Exception:  # noqa: BLE001 - connection refused, reset, timed out: the cluster is not answering
            silent_since = silent_since or time.monotonic()
            if time.monotonic() - silent_since >= lost_after:
                return "LOST"
            state = ""
        if state in TERMINAL or (state and time.monotonic() >= deadline):
            return state
        time.sleep(0.25)  # the status usually follows the stream's end within a second or two


def _ask(address: str, job_id: str, call: str):
    """``client.<call>(job_id)``, with an unknown job as one ``error:`` line."""
    try:
        return getattr(_client(address), call)(job_id)
    except RuntimeError as e:
        raise UserError(f"unknown Ray job {job_id} at {address}: {str(e).splitlines()[0]}") from None


def status(address: str, job_id: str) -> int:
    info = _ask(address, job_id, "get_job_info")
    print(f"state: {str(info.status).split('.')[-1]}")
    if info.message:
        print(f"message: {info.message}")
    return 0


def cancel(address: str, job_id: str) -> int:
    stopped = _ask(address, job_id, "stop_job")
    print(f"cancelled: {job_id}" if stopped else f"not running: {job_id}")
    return 0
