"""One owner per directory, with real processes: two `pah sweep` drivers on one sweep, two `pah train`
on one --out, and the lease of a sweep on object storage (moto's S3 server), taken over when stale.

The second driver (or training) exits 2 with one `error:` line naming the holder (host and pid),
before it has written anything or started Ray; the first finishes as if alone.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import run_pah

ROOT = Path(__file__).resolve().parents[1]
HOST = socket.gethostname()
TRAIN = ["train", "split-digits-pah", "--set", "train.epochs_per_task=1", "--device", "cpu", "--no-progress"]


def _error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("error:")]


# --------------------------------------------------------------------------- pah train --out


@pytest.mark.slow
def test_two_trainings_on_one_out_the_second_exits_2_naming_the_first(tmp_path):
    out = tmp_path / "trial"
    env = {**os.environ, "WANDB_MODE": "offline"}
    longer = [*TRAIN[:3], "train.epochs_per_task=2", *TRAIN[4:]]
    first = subprocess.Popen([sys.executable, "-m", "pah", *longer, "--out", str(out)], env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        t0 = time.monotonic()
        while not (out / "checkpoint" / "state.pt").exists():  # training, with its lock held
            assert first.poll() is None, first.communicate()[1][-3000:]
            assert time.monotonic() - t0 < 120
            time.sleep(0.05)
        ckpt = (out / "checkpoint" / "state.pt").read_bytes()
        # paused mid-training, lock held, so that the second surely meets it however loaded the machine is
        first.send_signal(signal.SIGSTOP)
        t1 = time.monotonic()
        try:
            second = run_pah(*longer, "--out", str(out), timeout=120)
        finally:
            first.send_signal(signal.SIGCONT)
        refused_s = time.monotonic() - t1
        assert first.poll() is None, "the first training ended before the second was refused: the test proves nothing"
        assert second.returncode == 2, second.stderr[-3000:]
        (line,) = second.stderr.strip().splitlines()
        assert line.startswith("error: --out ") and str(out) in line and "in use by" in line, line
        assert f"pid {first.pid} on host {HOST}" in line, line
        assert "out:" not in second.stdout  # stopped before it began
        print(f"refused in {refused_s:.1f} s")
        rc = first.wait(timeout=180)
        assert rc == 0, first.communicate()[1][-3000:]
        # it went on training after the refusal: a later checkpoint (compared by content: a replaced file
        # may reuse the freed inode of an earlier one)
        assert (out / "result.json").exists() and (out / "checkpoint" / "state.pt").read_bytes() != ckpt
        # released when the first ended: the same command now runs (finished already: nothing to train)
        again = run_pah(*longer, "--out", str(out), timeout=120)
        assert again.returncode == 0, again.stderr[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
        first.communicate()


def test_the_lock_dies_with_its_process(tmp_path):
    """A holder killed with SIGKILL (no clean-up) leaves no lock behind: the kernel dropped it."""
    code = ("import sys, time; from pah.lock import DirLock; DirLock(sys.argv[1]).acquire(); "
            "print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        from pah.lock import DirLock, Held

        with pytest.raises(Held, match=f"in use by pid {holder.pid} on host {HOST}"):
            DirLock(tmp_path, "--out").acquire()
        holder.kill()
        holder.wait()
        with DirLock(tmp_path, "--out") as lock:  # free now
            assert json.loads(lock.path.read_text())["pid"] == os.getpid()
            with pytest.raises(Held, match="in use by this process already"):
                DirLock(tmp_path).acquire()
        DirLock(tmp_path).acquire().release()  # and released on the way out of the with
    finally:
        holder.kill()
        holder.wait()


# --------------------------------------------------------------------------- two sweep drivers


def test_the_driver_locks_the_dir_it_will_open(tmp_path):
    pytest.importorskip("ray.tune")
    from pah.lock import DirLock
    from sweeps.owner import sweep_owner
    from sweeps.spec import Spec

    spec, overrides, name, owner = sweep_owner("quickstart", ["num_samples=2"], tmp_path, None, None)
    # no --name: the default one is fixed here (the spec loaded once, its overrides applied)
    assert isinstance(spec, Spec) and spec.num_samples == 2 and overrides == () and name.startswith("quickstart-")
    assert isinstance(owner, DirLock) and owner.dir == tmp_path / name
    spec, overrides, name, owner = sweep_owner("quickstart", ["num_samples=2"], tmp_path, "given", None)
    assert (spec, overrides, name, owner.dir) == ("quickstart", ["num_samples=2"], "given", tmp_path / "given")
    # what the driver refuses with its own message gets no lock (nothing written there): a dir of other
    # things, a file, a --resume of no sweep
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    (tmp_path / "afile").write_text("")
    for args in (("quickstart", (), tmp_path, "other", None), ("quickstart", (), tmp_path, "afile", None),
                 (None, (), None, None, tmp_path / "other")):
        assert not isinstance(sweep_owner(*args)[3], DirLock), args
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "other"]


@pytest.mark.slow
def test_two_drivers_on_one_sweep_the_second_exits_2_before_touching_it(tmp_path):
    pytest.importorskip("ray.tune")
    pytest.importorskip("optuna")
    from test_sweep_e2e import Sweep, _env, _in_optuna_db, _results, _wait_for, _write_spec

    # trials of several seconds: at 1 epoch a task the 3 trials (about 1 s each) could all end before the two
    # other drivers, fresh Pythons, were refused, and the test would prove nothing
    spec = _write_spec(tmp_path / "two.yaml", set={"train.epochs_per_task": 10},
                       space={"train.lr": {"loguniform": [0.001, 0.005]}}, searcher="optuna-tpe", num_samples=3,
                       scheduler="none", confirm={"top_k": 0})
    args = [str(spec), "--storage", str(tmp_path / "sweeps"), "--name", "same"]
    sweep = tmp_path / "sweeps" / "same"
    first = Sweep(args, tmp_path, tmp_path / "first.txt")
    try:
        _wait_for(lambda: any((sweep / "trials" / "search").glob("*/log.txt")), 150, "a trial started", first)
        # `pah sweep --name same` again, and `pah sweep --resume DIR`, at the same time
        others = [subprocess.Popen([sys.executable, "-m", "pah", "sweep", *a], cwd=tmp_path, env=_env(), text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                  for a in (args, ["--resume", str(sweep)])]
        answers = [p.communicate(timeout=120) for p in others]
        assert first.proc.poll() is None, "the first driver ended first: the test proves nothing"
        for (stdout, stderr), p in zip(answers, others, strict=True):
            assert p.returncode == 2, stdout[-2000:] + stderr[-2000:]
            (line,) = stderr.strip().splitlines()
            assert line.startswith(f"error: sweep {sweep} is in use by pid {first.proc.pid} on host {HOST}"), line
            assert "pah sweep --resume" in line and "sweep:" not in stdout, line
        # the two refused drivers wrote nothing: every file there is the first driver's (unchanged or its own newer)
        assert json.loads((sweep / ".pah-lock").read_text())["pid"] == first.proc.pid
        rc, out = first.wait(timeout=240)
    finally:
        first.close()
    assert rc == 0, out[-4000:]
    results = _results(sweep, "search")
    assert len(results) == 3, sorted(results)  # exactly num_samples trials, each trained by one driver
    assert sorted(_in_optuna_db(sweep)) == sorted(results)  # the study holds each trial once
    for d in (sweep / "trials" / "search").iterdir():
        pids = {ln.split("pid=")[1].split()[0] for ln in (d / "log.txt").read_text().splitlines()}
        assert len(pids) == 1, (d.name, pids)  # one worker process per trial: no second driver ran it
    # the lock went with the first driver: resuming now just reports the finished sweep
    r = subprocess.run([sys.executable, "-m", "pah", "sweep", "--resume", str(sweep)], cwd=tmp_path, env=_env(),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "search done" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]


# --------------------------------------------------------------------------- the lease of a bucket


@pytest.fixture
def bucket(s3, monkeypatch):
    """Point pyarrow at the moto server, as the CLI's environment would."""
    from test_storage_s3 import BUCKET, _s3_env

    endpoint, fs = s3
    for k, v in _s3_env(endpoint).items():
        if k.startswith("AWS_"):
            monkeypatch.setenv(k, v)
    monkeypatch.setenv("PAH_LEASE_HEARTBEAT_S", "0.5")
    return f"s3://{BUCKET}/lease-{time.monotonic_ns()}", fs, endpoint


try:  # the moto server fixture of the S3 tests
    from test_storage_s3 import s3  # noqa: F401
except pytest.skip.Exception as e:  # no moto, Ray or pyarrow: the lease tests skip, saying why
    _why = str(e)

    @pytest.fixture
    def s3():
        pytest.skip(_why)


def _lease_of(fs, uri: str) -> dict | None:
    try:
        with fs.open_input_stream(uri.removeprefix("s3://") + "/.pah-lease") as f:
            return json.loads(f.read())
    except FileNotFoundError:
        return None


def _put_lease(fs, uri: str, info: dict) -> None:
    with fs.open_output_stream(uri.removeprefix("s3://") + "/.pah-lease") as f:
        f.write(json.dumps(info).encode())


def test_bucket_lease_excludes_renews_and_is_taken_over_when_stale(bucket, capsys):
    from pah.lock import Held
    from sweeps.owner import Lease

    uri, fs, _ = bucket
    with Lease(uri) as mine:
        held = _lease_of(fs, uri)
        assert held["pid"] == os.getpid() and held["host"] == HOST and held["token"] == mine.token
        with pytest.raises(Held, match=f"in use by pid {os.getpid()} on host {HOST}"):
            Lease(uri).acquire()
        time.sleep(1.3)  # two heartbeats
        assert _lease_of(fs, uri)["renewed"] > held["renewed"]
    assert _lease_of(fs, uri) is None  # released: deleted

    # a crashed holder on another host: fresh, it excludes; after 3 missed heartbeats, it is taken over
    crashed = {"host": "node-that-crashed", "pid": 4242, "token": "x", "heartbeat_s": 0.5, "renewed": time.time()}
    _put_lease(fs, uri, crashed)
    with pytest.raises(Held, match="in use by pid 4242 on host node-that-crashed") as refused:
        Lease(uri).acquire()
    # the refusal says when a retry takes over, should the holder be gone with its node (a lost head)
    assert re.search(r"renewed \d+ s ago; .* the lease lapses in [12] s and a retry then takes it over",
                     str(refused.value)), refused.value
    time.sleep(1.6)
    with Lease(uri) as mine:
        assert _lease_of(fs, uri)["token"] == mine.token
    err = capsys.readouterr().err
    assert "taking over the lease" in err and "pid 4242 on host node-that-crashed" in err and "3 missed" in err

    # a holder on this host whose process is gone (a killed driver resumed at once): taken over at once,
    # a zombie (killed, its parent not yet told) too
    for reaped in (True, False):
        dead = subprocess.Popen(["true"])
        if reaped:
            dead.wait()
        else:
            time.sleep(0.5)
            assert Path(f"/proc/{dead.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
        _put_lease(fs, uri, {**crashed, "host": HOST, "pid": dead.pid, "renewed": time.time(), "heartbeat_s": 30})
        with Lease(uri) as mine:
            assert _lease_of(fs, uri)["token"] == mine.token
            assert mine.stale_reason({**crashed, "host": HOST, "pid": dead.pid, "renewed": time.time()}) == \
                "that process is gone"
        assert capsys.readouterr().err == ""  # silently, as a dead process's lock is: the first line stays 'sweep:'
        dead.wait()


def test_a_requeued_slurm_job_takes_over_its_earlier_runs_lease(bucket, monkeypatch, capsys):
    """The same job, started again by a requeue (SLURM_RESTART_COUNT up): the earlier run is over, even if its
    lease looks fresh (it died on another node a moment ago). Two drivers in one allocation still exclude."""
    from pah.lock import Held
    from sweeps.owner import Lease

    uri, fs, _ = bucket
    earlier = {"host": "node1", "pid": 99, "token": "x", "heartbeat_s": 30, "renewed": time.time(),
               "slurm_job": "77", "slurm_restart": 0}
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    _put_lease(fs, uri, earlier)
    with pytest.raises(Held, match="pid 99 on host node1 .*SLURM job 77"):
        Lease(uri).acquire()
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    with Lease(uri) as mine:
        assert _lease_of(fs, uri)["token"] == mine.token and _lease_of(fs, uri)["slurm_restart"] == 1
    assert "an earlier run of this SLURM job 77, requeued since" in capsys.readouterr().err


def test_a_driver_whose_lease_was_taken_over_stops(bucket, tmp_path):
    """The holder cut off longer than the timeout finds another driver's lease at its next heartbeat: it
    stops at once (SIGTERM to itself), so that two drivers never run on one sweep."""
    uri, fs, _ = bucket
    code = ("import sys, time; from sweeps.owner import Lease; Lease(sys.argv[1]).acquire(); "
            "print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, uri], cwd=ROOT, env=os.environ.copy(), text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == "held", holder.communicate()[1][-2000:]
        _put_lease(fs, uri, {"host": "other-node", "pid": 7, "token": "theirs", "heartbeat_s": 0.5,
                             "renewed": time.time()})
        _, err = holder.communicate(timeout=30)
        assert holder.returncode == -signal.SIGTERM, err
        assert "another driver took over the lease" in err and "pid 7 on host other-node" in err, err
        assert _lease_of(fs, uri)["token"] == "theirs"  # left to its new holder
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.communicate()
