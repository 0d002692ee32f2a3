"""Several Tune trials trained in one process: ``resources.pack: K``.

A GPU running one small trial at a time is mostly idle: the step is bound by Python and
kernel launches. With ``pack: K`` the driver starts ``ceil(max_concurrent / K)`` packer
actors, each holding ``resources.gpus``; every Tune trial stays a Tune trial (its own
Optuna suggestion, ASHA decisions, ``result.json``, checkpoint and W&B run), but instead
of training in its own worker it hands its config to a packer with a free slot and relays
what the packer reports. A packer trains its members with :func:`pah.trial.trial_steps`,
taking turns step by step, each on a CUDA stream of its own (see :func:`pah.trial.run_packed`:
the same matrices as alone).

A member that finished a task waits, untrained, until its trial has reported that task to
Tune, so the checkpoint Tune copies is the one the report describes. A trial that Tune
stops (ASHA) or whose worker dies stops polling; the packer drops it after
:data:`HEARTBEAT_S` and the slot is free again. A restarted trial resumes from its trial
directory's checkpoint as usual. Packers and their trials must share a filesystem (one
node, or a shared ``--storage``): the packer writes the trial's directory.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Packer", "start_packers", "stop_packers", "run_in_packer", "packer_names", "HEARTBEAT_S"]

#: a member whose trial has not polled for this long is dropped (its trial was stopped or died)
HEARTBEAT_S = 10.0
#: how often a trial asks its packer for news
POLL_S = 0.05


@dataclass
class _Member:
    steps: Any  # the trial_steps generator
    events: list = field(default_factory=list)
    paused: bool = False  # finished a task; waits until its trial has reported it
    closed: bool = False  # replaced or dropped: the training thread closes its generator
    last_seen: float = field(default_factory=time.monotonic)
    stream: Any = None

    @property
    def ended(self) -> bool:
        return bool(self.events) and self.events[-1][0] in ("done", "error")


class Packer:
    """A Ray actor (threaded): ``join`` a trial, ``poll`` its events; a background thread trains."""

    def __init__(self, capacity: int, cpus: float = 1.0) -> None:
        import torch

        if cpus >= 1:
            torch.set_num_threads(int(cpus))
        self.capacity = capacity
        self._members: dict[str, _Member] = {}
        self._retired: list[_Member] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="pah-packer", daemon=True)
        self._thread.start()

    # ---- called by trials (from Ray's actor threads)
    def join(self, key: str, cfg: Any, out_dir: str) -> bool:
        """Take trial ``key`` (replacing an earlier member of that key); False when full."""
        from pah.trial import trial_steps

        member = _Member(steps=None)

        def on_task_end(report) -> None:
            with self._lock:
                member.events.append(("task", report))
                member.paused = True

        member.steps = trial_steps(cfg, Path(out_dir), device="auto", on_task_end=on_task_end, progress=False)
        with self._lock:
            old = self._members.get(key)
            if old is None and len(self._members) >= self.capacity:
                return False
            if old is not None:  # the trial started again (a retry): its old member goes
                self._retire(old)
            self._members[key] = member
        return True

    def poll(self, key: str, *, resume: bool = False) -> list[tuple[str, Any]] | None:
        """Events of trial ``key`` since the last poll (None: not a member); ``resume``: it reported its task."""
        with self._lock:
            member = self._members.get(key)
            if member is None:
                return None
            member.last_seen = time.monotonic()
            events, member.events = member.events, []
            if resume:
                member.paused = False
            if events and events[-1][0] in ("done", "error"):
                del self._members[key]
            return events

    def size(self) -> int:
        return len(self._members)

    # ---- the training thread: the only one that runs or closes the members' generators
    def _loop(self) -> None:
        import torch

        from pah.trial import step_once

        while True:
            with self._lock:
                now = time.monotonic()
                for key in [k for k, m in self._members.items() if now - m.last_seen > HEARTBEAT_S]:
                    self._retire(self._members.pop(key))  # its trial stopped polling: stopped by Tune, or dead
                retired, self._retired = self._retired, []
                live = [m for m in self._members.values() if not (m.paused or m.ended or m.closed)]
            for m in retired:
                with contextlib.suppress(Exception):
                    m.steps.close()
            if not live:
                time.sleep(POLL_S / 2)
                continue
            for m in live:
                if m.closed:
                    continue
                if m.stream is None and torch.cuda.is_available():
                    m.stream = torch.cuda.Stream()
                event = step_once(m.steps, m.stream)
                if event is None:
                    continue
                if event[0] == "error":  # the member's own failure, reported to its trial
                    event = ("error", (type(event[1]).__name__, str(event[1])))
                with self._lock:
                    m.events.append(event)

    def _retire(self, member: _Member) -> None:
        """Under the lock: mark ``member`` for closing by the training thread."""
        member.closed = True
        self._retired.append(member)


def packer_names(sweep_dir: str | Path, phase: str, count: int) -> list[str]:
    import hashlib

    tag = hashlib.sha256(str(Path(sweep_dir).absolute()).encode()).hexdigest()[:10]
    return [f"pah-packer-{tag}-{phase}-{i}" for i in range(count)]


def start_packers(names: list[str], *, capacity: int, cpus: float, gpus: float) -> list[Any]:
    """One packer actor per name, each holding ``gpus`` GPUs (its trials hold none)."""
    import ray

    actor = ray.remote(max_concurrency=4 * capacity + 4)(Packer)
    handles = [actor.options(name=n, num_cpus=0, num_gpus=gpus).remote(capacity, cpus) for n in names]
    ray.get([h.size.remote() for h in handles])  # started (and placed) before any trial looks for them
    return handles


def stop_packers(handles: list[Any]) -> None:
    import ray

    for h in handles:
        with contextlib.suppress(Exception):
            ray.kill(h)


def run_in_packer(names: list[str], key: str, cfg: Any, out_dir: Path, on_task_end) -> dict[str, Any]:
    """What :func:`pah.trial.run_trial` does, done by a packer: join one with a free slot, relay its events."""
    import ray

    from pah.trial import NonFiniteLoss

    handles = [ray.get_actor(n) for n in names]
    while True:
        for h in handles:
            if ray.get(h.join.remote(key, cfg, str(out_dir))):
                break
        else:  # every slot taken (a stopped trial's slot frees within HEARTBEAT_S)
            time.sleep(0.5)
            continue
        break
    resume = False
    while True:
        events = ray.get(h.poll.remote(key, resume=resume))
        resume = False
        if events is None:
            raise RuntimeError(f"packer {names[handles.index(h)]} dropped trial {key}")
        for kind, payload in events:
            if kind == "task":
                on_task_end(payload)
                resume = True
            elif kind == "done":
                return payload
            else:
                name, message = payload
                raise (NonFiniteLoss if name == "NonFiniteLoss" else RuntimeError)(message if name == "NonFiniteLoss"
                                                                                  else f"{name}: {message}")
        if not events:
            time.sleep(POLL_S)
