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
    env_vars.update(env)
    renv: dict[str, Any] = {"py_modules": modules, "env_vars": env_vars,
                            "excludes": ["__pycache__", "*.pyc"]}
    if working_dir is not None:
        renv["working_dir"] = str(working_dir)
    if pip:
        renv["pip"] = list(pip)
    return renv


def _client(address: str):
    from ray.job_submission import JobSubmissionClient

    if not address.startswith(("http://", "https://")):
        raise UserError(f"--address must be the dashboard URL, like http://HOST:8265, got {address!r}")
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


def follow(address: str, job_id: str) -> str:
    """Stream the job's logs until it ends; returns its final status."""
    client = _client(address)

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            sys.stdout.write(chunk)
            sys.stdout.flush()

    asyncio.run(tail())
    # the log stream closes as the job ends; its status follows a moment later
    deadline = time.monotonic() + 60
    state = str(client.get_job_status(job_id))
    while state.split(".")[-1] not in TERMINAL and time.monotonic() < deadline:
        time.sleep(1)
        state = str(client.get_job_status(job_id))
    return state.split(".")[-1]


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
