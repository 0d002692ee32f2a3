"""Storage faults that pass are waited out, with real processes: a bucket that refuses connections for a
while (moto's S3 server behind a TCP proxy that we take down and bring back on the same port: restarting
moto itself would lose its in-memory bucket), and a full disk freed later (a small tmpfs, as root).

The waits are tuned short by environment (pah/retry.py): backoff capped at 2 s, a report line every
2-5 s, so that an outage of 20 s proves what one of minutes would, in a test of about a minute.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import pytest

HOST = "127.0.0.1"


class Proxy:
    """A TCP proxy on a port of its own to ``target`` (host, port); ``down()`` closes the port and every
    connection through it (a client then gets 'connection refused'), ``up()`` listens on it again."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        with socket.socket() as s:
            s.bind((HOST, 0))
            self.port = s.getsockname()[1]
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self.hanging = False  # accept connections, answer nothing (a storage that hangs)
        self.up()

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    def up(self) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((HOST, self.port))
        sock.listen(128)
        sock.settimeout(0.1)
        self._listener = sock
        self._acceptor = threading.Thread(target=self._accept, args=(sock,), daemon=True)
        self._acceptor.start()

    def down(self) -> None:
        sock, self._listener = self._listener, None
        if sock is not None:
            self._acceptor.join()  # out of accept() (0.1 s at most): the kernel frees the port on close
            sock.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()

    def _accept(self, sock: socket.socket) -> None:
        while self._listener is sock:
            try:
                client, _ = sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self.hanging:
                with self._lock:
                    self._conns.append(client)
                continue
            try:
                server = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(1 << 16):
                b.sendall(data)
        except OSError:
            pass
        finally:
            try:
                b.shutdown(socket.SHUT_WR)
            except OSError:
                pass


try:  # the moto server fixture of the S3 tests
    from test_storage_s3 import BUCKET, s3  # noqa: F401
except pytest.skip.Exception as e:  # no moto, Ray or pyarrow: the bucket tests skip, saying why
    _why = str(e)
    BUCKET = "pah-sweeps"

    @pytest.fixture
    def s3():
        pytest.skip(_why)


@pytest.fixture
def proxy(s3):
    endpoint, fs = s3
    host, port = endpoint.removeprefix("http://").split(":")
    p = Proxy((host, int(port)))
    try:
        yield p, fs
    finally:
        p.down()


FAST = {"PAH_STORAGE_BACKOFF_S": "2", "PAH_STORAGE_REPORT_S": "2", "PAH_STORAGE_RETRY_S": "120"}


# --------------------------------------------------------------------------- units


def test_a_refused_bucket_is_retried_with_backoff_and_reported_until_it_returns(proxy, monkeypatch):
    import pyarrow.fs as pafs

    from pah.retry import retrying

    p, _ = proxy
    for k, v in FAST.items():
        monkeypatch.setenv(k, v)
    fs = pafs.S3FileSystem(endpoint_override=p.endpoint, scheme="http", region="us-east-1", access_key="AKIAX",
                           secret_key="x", retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=1))
    path = f"{BUCKET}/faults-{time.monotonic_ns()}.txt"
    lines: list[str] = []
    p.down()
    threading.Timer(5.0, p.up).start()
    t0 = time.monotonic()

    def put() -> None:
        with fs.open_output_stream(path) as f:
            f.write(b"kept")

    retrying(put, "storage s3://test", what="uploading", say=lines.append)
    took = time.monotonic() - t0
    with fs.open_input_stream(path) as f:
        assert f.read() == b"kept"
    assert 5.0 <= took < 15, took  # waited for it (backoff 1, 2, 2, ... s), not given up within the first second
    warnings = [ln for ln in lines if ln.startswith("warning: storage s3://test unreachable for")]
    assert len(warnings) >= 2 and "retrying (up to 120 s)" in warnings[0], lines  # one line every 2 s
    assert lines[-1].startswith("note: storage s3://test is back after"), lines


def test_a_hanging_bucket_is_reported_while_it_hangs(proxy, monkeypatch):
    import pyarrow.fs as pafs

    from pah.retry import retrying

    p, _ = proxy
    monkeypatch.setenv("PAH_STORAGE_REPORT_S", "1")
    fs = pafs.S3FileSystem(endpoint_override=p.endpoint, scheme="http", region="us-east-1", access_key="AKIAX",
                           secret_key="x", request_timeout=30, retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=1))
    p.down()
    p.hanging = True
    p.up()

    def answer_again() -> None:
        p.down()
        p.hanging = False
        p.up()

    threading.Timer(3.5, answer_again).start()  # its connections dropped: the client's request fails, then a retry
    lines: list[str] = []
    info = retrying(lambda: fs.get_file_info(BUCKET), "storage s3://test", what="reading", say=lines.append)
    assert info.type == pafs.FileType.Directory
    hung = [ln for ln in lines if ln.startswith("warning: storage s3://test has not answered for")]
    assert len(hung) >= 2 and "reading, waiting" in hung[0], lines  # said every second while it hung


def test_past_the_deadline_the_error_says_how_long_and_final_errors_are_not_retried(tmp_path, monkeypatch):
    from pah.retry import gave_up, retrying, transient

    monkeypatch.setenv("PAH_STORAGE_RETRY_S", "1.5")
    monkeypatch.setenv("PAH_STORAGE_BACKOFF_S", "0.2")
    with socket.socket() as s:  # a port nobody listens on
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    calls = []

    def refused() -> None:
        calls.append(1)
        socket.create_connection((HOST, port), timeout=2).close()

    with pytest.raises(ConnectionRefusedError) as e:
        retrying(refused, f"storage {HOST}:{port}", say=lambda line: None)
    assert len(calls) >= 3 and gave_up(e.value) == "unreachable" and "for 2 s, retried with backoff" in str(e.value)
    assert transient(e.value) is None  # an outer retry does not start the wait over

    calls.clear()

    def not_a_dir() -> None:
        calls.append(1)
        (tmp_path / "f").write_text("x")
        (tmp_path / "f" / "g").write_text("y")

    with pytest.raises(NotADirectoryError):  # not something waiting cures: raised at once
        retrying(not_a_dir, "disk", say=lambda line: None)
    assert len(calls) == 1


def test_a_lost_wandb_history_is_a_warning_naming_the_run(tmp_path, capsys):
    from sweeps.wandb_runs import warn_lost_history

    restored = types.SimpleNamespace(last_result={"tasks_completed": 2})
    warn_lost_history(restored, tmp_path, "ab12_00001")  # wandb/ deleted
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("warning: the W&B history of trial ab12_00001 is lost") and "2 task(s)" in line, line
    (tmp_path / "wandb" / "rows").mkdir(parents=True)
    (tmp_path / "wandb" / "rows" / "ab12_00001.jsonl").write_text('{"_step": 1}\n')
    warn_lost_history(restored, tmp_path, "ab12_00001")  # its journal is there: nothing to say
    warn_lost_history(types.SimpleNamespace(last_result={}), tmp_path, "ab12_00002")  # a new trial: nothing lost
    assert capsys.readouterr().err == ""


# --------------------------------------------------------------------------- a sweep through an outage


@pytest.mark.slow
def test_a_bucket_down_for_20_s_mid_sweep_ends_with_every_trial_finished(tmp_path, proxy):
    pytest.importorskip("ray.tune")
    pytest.importorskip("optuna")
    from test_storage_s3 import _files, _log_lines, _s3_env
    from test_sweep_e2e import Sweep, _write_spec

    p, fs = proxy
    (tmp_path / "tmp").mkdir()
    env = _s3_env(p.endpoint, TMPDIR=str(tmp_path / "tmp"), **FAST)
    spec = _write_spec(tmp_path / "out.yaml", set={"train.epochs_per_task": 1},
                       space={"train.lr": {"loguniform": [0.001, 0.005]}}, searcher="optuna-tpe", num_samples=2,
                       scheduler="none", confirm={"top_k": 0})
    prefix = f"{BUCKET}/sweeps/outage"
    run = Sweep([str(spec), "--storage", f"s3://{BUCKET}/sweeps", "--name", "outage"], tmp_path, tmp_path / "out.txt",
                env=env)
    try:
        t0 = time.monotonic()
        while not any("trained task 1/" in ln for rel in _files(fs, prefix) if rel.endswith("/log.txt")
                      for ln in _log_lines(fs, f"{prefix}/{rel}")):
            assert run.proc.poll() is None and time.monotonic() - t0 < 200, run.log.read_text()[-4000:]
            time.sleep(0.2)
        p.down()  # mid-sweep: the trials are between tasks 1 and 5
        time.sleep(20)
        p.up()
        rc, out = run.wait(timeout=240)
    finally:
        run.close()
    assert rc == 0 and " ERROR " not in out, out[-4000:]
    files = _files(fs, prefix)
    trials = sorted({rel.split("/")[2] for rel in files if rel.startswith("trials/search/")})
    assert len(trials) == 2 and all(f"trials/search/{t}/result.json" in files for t in trials), sorted(files)
    assert not [rel for rel in files if rel.endswith("error.json")]
    logs = {t: _log_lines(fs, f"{prefix}/trials/search/{t}/log.txt") for t in trials}
    for t, lines in logs.items():  # each trial ran through the outage in one go: waited, never failed and restarted
        assert len([ln for ln in lines if " start " in ln]) == 1, (t, lines)
    waited = [ln for lines in logs.values() for ln in lines if "unreachable for" in ln]
    assert waited and any("retrying" in ln for ln in waited), logs  # said while it lasted, in the trial's log
    assert json.loads((fs.open_input_stream(f"{prefix}/sweep.json")).read())["phases"]["search"]["done"]


# --------------------------------------------------------------------------- pah train on a full disk, freed


@pytest.mark.slow
def test_a_full_disk_freed_within_the_deadline_loses_nothing(tmp_path):
    from test_faults import TRAIN, _error_lines, _tasks_in

    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {r.stderr.strip()}")
    try:
        out = mnt / "trial"
        ckpt = out / "checkpoint" / "state.pt"
        err_file = tmp_path / "stderr.txt"
        env = {**os.environ, "WANDB_MODE": "offline", **FAST}
        with open(err_file, "w") as err:
            proc = subprocess.Popen([sys.executable, "-m", "pah", *TRAIN, "--out", str(out)], env=env,
                                    stdout=subprocess.PIPE, stderr=err, text=True)
        t0 = time.monotonic()
        while not ckpt.exists():
            assert proc.poll() is None and time.monotonic() - t0 < 120, err_file.read_text()[-3000:]
            time.sleep(0.01)
        filler = mnt / "filler"  # leave 64 KiB: room for small files, not for the next checkpoint
        st = os.statvfs(mnt)
        with open(filler, "wb") as f:
            os.posix_fallocate(f.fileno(), 0, st.f_bavail * st.f_frsize - 64 * 1024)
        while "full for" not in err_file.read_text():  # the next checkpoint waits for room
            assert proc.poll() is None and time.monotonic() - t0 < 180, err_file.read_text()[-3000:]
            time.sleep(0.1)
        time.sleep(4)  # a few retries, a second report
        kept = _tasks_in(ckpt)
        filler.unlink()
        proc.communicate(timeout=180)
        err = err_file.read_text()
        assert proc.returncode == 0 and not _error_lines(err), err[-3000:]
        waits = [ln for ln in err.splitlines() if ln.startswith(f"warning: disk of {out}")]
        assert len(waits) >= 2 and "full for" in waits[0] and "No space left on device" in waits[0], err
        assert any(ln.startswith(f"note: disk of {out}") and "is back after" in ln for ln in err.splitlines()), err
        result = json.loads((out / "result.json").read_text())
        assert len(result["acc_matrix"]) == 5 and len(_tasks_in(ckpt)) == 5 and 1 <= len(kept) < 5
        assert [row[: len(k)] for row, k in zip(result["acc_matrix"][: len(kept)], kept, strict=True)] == kept
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_ray_tunes_failed_state_copies_are_said_in_a_line_while_they_last(monkeypatch, capsys):
    """Ray logs each failed copy of its experiment state with a traceback, from inside its except clause:
    one that waiting cures becomes a warning line (at most one a report period); any other passes."""
    import logging

    pytest.importorskip("ray.tune")
    from sweeps.snapshot import SyncFailures

    monkeypatch.setenv("PAH_STORAGE_REPORT_S", "60")
    seen = []
    handler = logging.Handler()
    handler.emit = seen.append
    log = logging.getLogger("ray.train._internal.syncer")
    log.addHandler(handler)
    try:
        with SyncFailures("disk of /data/sw/tune/search"):
            for e in (OSError(errno.ENOSPC, "No space left on device"), OSError(errno.ENOSPC, "again"),
                      PermissionError(errno.EACCES, "Permission denied")):
                try:
                    raise e
                except OSError:
                    log.warning("Last sync command failed with the following error: ...")
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            log.warning("after the phase: Ray's own record again")
    finally:
        log.removeHandler(handler)
    err = capsys.readouterr().err.splitlines()
    assert err == ["warning: disk of /data/sw/tune/search full for 0 s saving Ray Tune's experiment state "
                   "([Errno 28] No space left on device), retrying (up to 900 s)"], err
    assert [r.getMessage()[:5] for r in seen] == ["Last ", "after"]


def test_a_w_and_b_journal_line_cut_short_is_taken_back(tmp_path):
    from sweeps.wandb_runs import _append

    path = tmp_path / "rows.jsonl"
    with open(path, "ab", buffering=0) as f:
        _append(f, b'{"_step": 1}\n')

        class Short:  # a write that stops after 3 bytes, as a full disk does
            def __init__(self, f):
                self.f = f

            def fileno(self):
                return self.f.fileno()

            def write(self, b):
                return self.f.write(b[:3])

        with pytest.raises(OSError) as e:
            _append(Short(f), b'{"_step": 2}\n')
        assert e.value.errno == errno.ENOSPC
        _append(f, b'{"_step": 2}\n')
    assert path.read_bytes() == b'{"_step": 1}\n{"_step": 2}\n'


@contextlib.contextmanager
def _tmpfs(mnt: Path, size: str):
    """A tmpfs of ``size`` mounted at ``mnt`` (a small disk to fill), unmounted after; skips where it cannot be
    mounted (not root)."""
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


WANDB_FULL = """
import os, sys, threading
from ray.air.integrations.wandb import _QueueItem
import sweeps.wandb_runs as w

root = sys.argv[1]
filler = os.path.join(os.path.dirname(root), "filler")
append = w._append

def fill_after_row_2(journal, line):  # the journal has its line; 3 s of a full disk follow
    append(journal, line)
    if line.startswith(b'{"_step": 2'):
        with open(filler, "wb", buffering=0) as f:
            for chunk in (b"\\0" * (1 << 20), b"\\0" * 4096):
                try:
                    while True:
                        f.write(chunk)
                except OSError:
                    pass
        threading.Timer(3.0, os.unlink, [filler]).start()

w._append = fill_after_row_2
spec = w.RunSpec("k", root, (), (), dict(id="t1", dir=root, mode="offline", project="p", config={"seed": 0}))
actor = w.SharedWandbActor()
for t in (1, 2, 3):  # result 3's config update reaches W&B's service on the full disk, its row waits for room
    config = {f"c{i}": t for i in range(3000 if t == 3 else 1)}  # past W&B's 32 KiB block: written at once
    actor.feed(spec, (_QueueItem.RESULT, {"tasks_completed": t, "avg_acc": 1.0 / t, "config": config}))
actor.feed(spec, (_QueueItem.END, None))
assert actor.close() == []
"""


def test_a_wandb_run_that_wandb_could_not_write_on_a_full_disk_is_written_again_from_its_journal(tmp_path):
    """W&B's service gives up a run's file after one failed write (a full disk), for good: the run is written
    again from its journal once there is room, and the broken one is moved out of the offline-run-* pattern."""
    pytest.importorskip("wandb")
    pytest.importorskip("ray")
    from sweeps.wandb_runs import history_rows, is_finished

    with _tmpfs(tmp_path / "disk", "32m") as mnt:
        root = mnt / "sweep"
        root.mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
        r = subprocess.run([sys.executable, "-c", WANDB_FULL, str(root)], env={**env, **FAST}, capture_output=True,
                           text=True, timeout=300, cwd=Path(__file__).resolve().parents[1])
        assert r.returncode == 0, r.stderr[-3000:]
        assert "W&B could not write" in r.stderr and "writing the run again from its journal" in r.stderr, r.stderr
        (broken,) = root.glob("wandb/replaced-run-*-t1/run-t1.wandb")
        assert not is_finished(broken)
        (run,) = root.glob("wandb/offline-run-*-t1/run-t1.wandb")
        rows = history_rows(run)
        assert is_finished(run) and [row["tasks_completed"] for row in rows] == [1, 2, 3]
        assert [row["avg_acc"] for row in rows] == pytest.approx([1, 1 / 2, 1 / 3])


def _fill(path) -> None:
    """Write ``path`` until its disk is full, to the last 4 KiB block (the sweep writes meanwhile)."""
    with open(path, "wb", buffering=0) as f:
        for chunk in (b"\0" * (1 << 20), b"\0" * 4096):
            try:
                while True:
                    f.write(chunk)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise


@pytest.mark.slow
def test_a_full_disk_freed_later_mid_sweep_loses_nothing(tmp_path):
    """A sweep whose disk fills after its first task checkpoint and is freed 15 s later: the driver waits it out
    (Ray Tune's copies of its experiment state, the W&B journal, the snapshot's good copy), says so in
    lines, not tracebacks, and ends with every trial finished once, in optuna.db and W&B once each."""
    pytest.importorskip("ray.tune")
    pytest.importorskip("optuna")
    from test_sweep_e2e import Sweep, _env, _in_optuna_db, _log_lines, _results, _write_spec

    from sweeps.wandb_runs import history_rows, run_is_complete

    with _tmpfs(tmp_path / "disk", "160m") as mnt:
        spec = _write_spec(tmp_path / "full.yaml", set={"train.epochs_per_task": 4}, wandb={"enabled": True},
                           space={"train.lr": {"loguniform": [0.001, 0.005]}}, searcher="optuna-tpe", num_samples=2,
                           scheduler="none", confirm={"top_k": 0})
        sweep = mnt / "full"
        run = Sweep([str(spec), "--storage", str(mnt), "--name", "full"], tmp_path, tmp_path / "out.txt",
                    env=_env(**FAST))
        filler = mnt / "filler"
        try:
            t0 = time.monotonic()
            while not any("trained task 1/" in ln for t in (sweep / "trials" / "search").glob("*")
                          for ln in _log_lines(t)):
                assert run.proc.poll() is None and time.monotonic() - t0 < 200, run.log.read_text()[-4000:]
                time.sleep(0.05)
            _fill(filler)  # every byte: the next checkpoint, snapshot and W&B row cannot be written
            time.sleep(15)
            filler.unlink()
            rc, out = run.wait(timeout=300)
        finally:
            filler.unlink(missing_ok=True)
            run.close()
        assert rc == 0 and "Traceback" not in out and " ERROR " not in out, out[-5000:]
        assert any(ln.startswith(f"warning: disk of {sweep}") and " full" in ln for ln in out.splitlines()), out
        assert any(ln.startswith(f"note: disk of {sweep} has room again") for ln in out.splitlines()), out
        results = _results(sweep, "search")
        assert len(results) == 2 and all(len(r["acc_matrix"]) == 5 for r in results.values()), results
        assert not list(sweep.rglob("error.json"))
        for t in results:  # each task trained once, each run complete with a row per task
            trained = [ln.split(" trained ")[1] for ln in _log_lines(sweep / "trials" / "search" / t)
                       if " trained task" in ln]
            assert len(trained) == 5 == len(set(trained)), trained
            assert run_is_complete(sweep, t)
            runs = list((sweep / "wandb").glob(f"offline-run-*-{t}/run-{t}.wandb"))
            assert len(runs) == 1 and [r["tasks_completed"] for r in history_rows(runs[0])] == [1, 2, 3, 4, 5]
        assert sorted(_in_optuna_db(sweep)) == sorted(results)


# --------------------------------------------------------------------------- a trial started again after a failure


def test_a_trial_restarted_after_failed_attempts_waits_with_backoff(monkeypatch):
    """Its log.txt says how its attempts ended: killed ones (a lost node, out of memory) and errors in a row
    make the next attempt wait 2, 4, 8 ... s (at most 60 s); a finished attempt or an old failure does not."""
    from sweeps.trainable import failed_attempts, restart_delay

    def at(t: float) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t))

    now = time.time()
    killed_twice = [f"{at(now - 50)} pid=1 start tasks_done=0", f"{at(now - 40)} pid=1 trained task 1/5",
                    f"{at(now - 30)} pid=2 start tasks_done=1",
                    f"{at(now - 20)} pid=3 start tasks_done=1", f"{at(now - 15)} pid=3 error OSError: disk"]
    n, how = failed_attempts(killed_twice, now)
    assert (n, how) == (3, "error OSError: disk")
    assert failed_attempts(killed_twice[:3], now) == (2, "killed: a lost node, out of memory, or a killed driver")
    assert failed_attempts([*killed_twice, f"{at(now - 10)} pid=4 start tasks_done=5 (finished already)",
                            f"{at(now - 9)} pid=4 finished"], now) == (0, "")
    assert failed_attempts([f"{at(now - 3600)} pid=1 start tasks_done=0"], now) == (0, "")  # long ago: a new run
    assert failed_attempts([], now) == (0, "")
    monkeypatch.delenv("PAH_RESTART_BACKOFF_S", raising=False)
    assert [restart_delay(k) for k in range(8)] == [0, 2, 4, 8, 16, 32, 60, 60]


def test_the_sweep_driver_says_while_its_disk_is_full(tmp_path, monkeypatch, capsys):
    """The trials' own lines about a full disk cannot reach their logs (on that disk): the driver, holding
    the sweep dir's lock, says it on its output while it lasts, and when there is room again."""
    from sweeps.owner import SweepLock

    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {r.stderr.strip()}")
    monkeypatch.setenv("PAH_STORAGE_REPORT_S", "0.5")
    try:
        with SweepLock(mnt / "sweep", "sweep"):
            time.sleep(1.2)
            assert capsys.readouterr().out == ""  # 96 MiB free: nothing to say
            filler = mnt / "filler"
            with open(filler, "wb") as f:
                os.posix_fallocate(f.fileno(), 0, os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize - (1 << 20))
            time.sleep(1.6)
            filler.unlink()
            time.sleep(1.0)
        out = capsys.readouterr().out.splitlines()
        full = [ln for ln in out if ln.startswith(f"warning: disk of {mnt / 'sweep'} full or nearly (")]
        assert len(full) >= 2 and "KiB free) for" in full[0] and "retrying" in full[0], out
        assert out[-1].startswith(f"note: disk of {mnt / 'sweep'} has room again"), out
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
