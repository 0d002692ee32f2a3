"""Sweeps on object storage, for real: an S3-compatible server (moto's standalone server) on 127.0.0.1.

The quickstart-like sweep of tests/test_sweep_e2e.py runs with ``--storage s3://BUCKET/sweeps``:
both phases, its driver killed mid-search and resumed with ``--resume s3://...`` (no finished
trial trained again), then ``pah analyze s3://...`` gives the table it gives for a local copy.
And the errors: no bucket, no credentials, wrong credentials, no endpoint: one line, exit 2,
nothing started (and no local folder named ``s3:``).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray.tune")
pytest.importorskip("optuna")
pytest.importorskip("moto")
pafs = pytest.importorskip("pyarrow.fs")

from test_sweep_e2e import Sweep, _env, _write_spec  # noqa: E402

pytestmark = pytest.mark.slow

BUCKET = "pah-sweeps"
KEY_ID, SECRET = "AKIAPAHTEST000000000", "pah-s3-secret-0123456789abcdef"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _moto(tmp: Path, **env: str) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    server = Path(sys.executable).with_name("moto_server")
    cmd = [str(server)] if server.exists() else [sys.executable, "-m", "moto.server"]
    proc = subprocess.Popen([*cmd, "-H", "127.0.0.1", "-p", str(port)], stdout=open(tmp / f"moto-{port}.log", "w"),
                            stderr=subprocess.STDOUT, env={**os.environ, **env})
    for _ in range(200):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, f"http://127.0.0.1:{port}"
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"moto_server did not start: {(tmp / f'moto-{port}.log').read_text()}")


def _s3_env(endpoint: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in _env().items() if not k.startswith("AWS_")}
    env.update({"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET,
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true", **extra})
    return env


def _fs(endpoint: str, **kw) -> pafs.S3FileSystem:
    return pafs.S3FileSystem(endpoint_override=endpoint, scheme="http", region="us-east-1", **kw)


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """(endpoint, filesystem) of a moto server with the bucket BUCKET."""
    tmp = tmp_path_factory.mktemp("moto")
    proc, endpoint = _moto(tmp)
    try:
        fs = _fs(endpoint, access_key=KEY_ID, secret_key=SECRET, allow_bucket_creation=True)
        fs.create_dir(BUCKET)
        yield endpoint, fs
    finally:
        proc.kill()
        proc.wait()


def _files(fs, prefix: str) -> dict[str, int]:
    sel = pafs.FileSelector(prefix, recursive=True, allow_not_found=True)
    return {i.path[len(prefix) + 1:]: i.size for i in fs.get_file_info(sel) if i.type == pafs.FileType.File}


def _read(fs, path: str) -> bytes:
    with fs.open_input_stream(path) as f:
        return f.read()


def _put(fs, path: str, data: bytes) -> None:
    with fs.open_output_stream(path) as f:
        f.write(data)


def _log_lines(fs, path: str) -> list[str]:
    try:
        return _read(fs, path).decode().splitlines()
    except OSError:
        return []


def _pah(*args: str, env: dict[str, str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pah", *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


# --------------------------------------------------------------------------- the sweep, killed and resumed


def test_sweep_on_s3_killed_driver_resume_and_analyze(tmp_path, s3):
    endpoint, fs = s3
    (tmp_path / "tmp").mkdir()
    env = _s3_env(endpoint, TMPDIR=str(tmp_path / "tmp"))  # the driver's staging copy, the trials' scratch dirs
    spec = _write_spec(
        tmp_path / "s3q.yaml",
        set={"train.epochs_per_task": 1},
        space={"train.lr": {"loguniform": [0.001, 0.005]}},
        searcher="optuna-tpe", num_samples=3, scheduler="none",
        confirm={"top_k": 1, "seeds": [0, 1]}, wandb=True,
    )
    uri = f"s3://{BUCKET}/sweeps/kd"
    prefix = f"{BUCKET}/sweeps/kd"
    run = Sweep([str(spec), "--storage", f"s3://{BUCKET}/sweeps", "--name", "kd"], tmp_path, tmp_path / "out1.txt",
                env=env)

    def trial_ids() -> set[str]:
        return {rel.split("/")[2] for rel in _files(fs, prefix) if rel.startswith("trials/search/")}

    def checkpointed(tid: str) -> bool:
        """The experiment state a restore starts from names ``tid`` (else a restore orphans it), and a whole
        task checkpoint of it is in the bucket, whether or not that state knows of the checkpoint yet (a trial
        whose reports came after Tune's last snapshot resumes from the newest of its checkpoints all the same:
        sweeps.trainable._newest_stored_checkpoint). Whole: its state.pt is there, of the size its meta.json
        records; a driver killed while Tune uploaded the dir leaves meta.json alone (seen in CI), and a trial
        rightly starts over from that."""
        rels = _files(fs, f"{prefix}/tune/search")
        named = any(rel.startswith("experiment_state-") and tid.encode() in _read(fs, f"{prefix}/tune/search/{rel}")
                    for rel in rels)

        def whole(meta_rel: str) -> bool:
            try:  # Tune keeps one checkpoint: the listed one may be gone, or going while it is read
                meta = json.loads(_read(fs, f"{prefix}/tune/search/{meta_rel}"))
            except (OSError, ValueError):  # (moto, under load: "Failed to flush response stream"); polled again
                return False
            return rels.get(meta_rel.replace("/meta.json", "/state.pt")) == meta["state_bytes"]

        return named and any(f"_{tid}_" in rel and "/checkpoint_" in rel and rel.endswith("/meta.json") and whole(rel)
                             for rel in rels)

    def mid_sweep():
        files = _files(fs, prefix)
        ids = trial_ids()
        done = {t for t in ids if f"trials/search/{t}/result.json" in files}
        busy = {t for t in ids - done
                if any("trained task" in ln for ln in _log_lines(fs, f"{prefix}/trials/search/{t}/log.txt"))
                and checkpointed(t)}
        return (done, busy) if done and busy else None

    t0 = time.monotonic()
    got = None
    while time.monotonic() - t0 < 150 and run.proc.poll() is None and not (got := mid_sweep()):
        time.sleep(0.2)
    if not got:
        run.close()
        pytest.fail(f"never saw one finished and one half-trained trial:\n{run.log.read_text()[-4000:]}")
    done, busy = got
    run.kill_driver()
    time.sleep(0.5)
    run.close()
    out1 = run.log.read_text()
    assert out1.splitlines()[0] == f"sweep: {uri}", out1[:2000]
    assert not (tmp_path / "s3:").exists() and not (tmp_path / "kd").exists()  # nothing in a local folder
    before = {t: len(_log_lines(fs, f"{prefix}/trials/search/{t}/log.txt")) for t in trial_ids()
              if f"trials/search/{t}/result.json" in _files(fs, prefix)}
    assert before and len(before) < 3
    t_resume = time.monotonic()

    # resumed as on another machine: a fresh staging copy and fresh trial scratch dirs (another $TMPDIR),
    # so the driver has only the bucket, and an unfinished trial only its checkpoint there
    (tmp_path / "tmp2").mkdir()
    resume = Sweep(["--resume", uri], tmp_path, tmp_path / "out2.txt", env={**env, "TMPDIR": str(tmp_path / "tmp2")})
    rc, out = resume.wait(timeout=200)
    assert rc == 0, out[-4000:]
    resumed_s = time.monotonic() - t_resume
    assert out.splitlines()[0] == f"sweep: {uri}"
    assert f"restoring {uri}/tune/search" in out and " ERROR " not in out and "seed-averaged" in out

    files = _files(fs, prefix)
    # everything under the prefix: state, spec, trials, task checkpoints (Tune's), study, W&B runs, report
    for name in ("sweep.json", "spec.yaml", "optuna.db", "report.html"):
        assert name in files, sorted(files)
    state = json.loads(_read(fs, f"{prefix}/sweep.json"))
    assert state["phases"]["search"]["done"] and state["phases"]["confirm"]["done"]
    assert state["phases"]["search"]["path"] == f"{uri}/tune/search"
    search = {rel.split("/")[2] for rel in files if rel.startswith("trials/search/") and rel.endswith("/result.json")}
    confirm = {rel.split("/")[2] for rel in files if rel.startswith("trials/confirm/") and rel.endswith("/result.json")}
    assert len(search) == 3 and confirm
    # the confirm phase reused the search seed of the candidates that finished it (staged on the first machine)
    cands = state["phases"]["confirm"]["candidates"]
    assert all(c["dir"].startswith(str(tmp_path / "tmp2")) for c in cands if c["dir"])
    assert "seed-averaged" in out and all(c["config_id"] in out[out.index("seed-averaged"):] for c in cands)
    assert any(rel.startswith("tune/search/") and "/checkpoint_" in rel for rel in files)
    assert any(rel.startswith("wandb/offline-run-") and rel.endswith(".wandb") for rel in files)
    for t, n in before.items():  # finished before the kill: not one task trained again
        new = _log_lines(fs, f"{prefix}/trials/search/{t}/log.txt")[n:]
        assert not [ln for ln in new if "trained task" in ln], (t, new)
    for t in busy - set(before):  # resumed from its task checkpoint (from the bucket), not from scratch
        starts = [ln for ln in _log_lines(fs, f"{prefix}/trials/search/{t}/log.txt") if " start " in ln]
        ckpts = {rel: size for rel, size in files.items() if f"_{t}_" in rel and "/checkpoint_" in rel}
        assert len(starts) >= 2 and int(starts[-1].split("tasks_done=")[1].split()[0]) >= 1, (starts, ckpts)
    for rel in files:  # the credentials never reach a file
        assert SECRET.encode() not in _read(fs, f"{prefix}/{rel}"), rel

    # pah analyze on the URI: the table of a local copy
    local = tmp_path / "copy" / "kd"
    pafs.copy_files(prefix, str(local), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    t_an = time.monotonic()
    remote_an = _pah("analyze", uri, env=env, cwd=tmp_path)
    analyze_s = time.monotonic() - t_an
    local_an = _pah("analyze", str(local), env=env, cwd=tmp_path)
    assert remote_an.returncode == 0 and local_an.returncode == 0, remote_an.stderr + local_an.stderr
    assert remote_an.stdout == local_an.stdout and state["base"]["config_id"] in remote_an.stdout
    print(f"resume {resumed_s:.1f} s, analyze {analyze_s:.1f} s")


# --------------------------------------------------------------------------- errors, before anything starts


def test_storage_errors_are_one_line_and_exit_2(tmp_path, s3):
    endpoint, _ = s3
    # a second server that checks credentials once its first few requests (which create the bucket) are spent
    proc, auth_endpoint = _moto(tmp_path, INITIAL_NO_AUTH_ACTION_COUNT="3")
    try:
        _fs(auth_endpoint, access_key=KEY_ID, secret_key=SECRET, allow_bucket_creation=True).create_dir(BUCKET)
        wrong = _fs(auth_endpoint, access_key="AKIAWRONG", secret_key="x",
                    retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=1))
        for _ in range(5):  # spend what is left of the unauthenticated requests
            try:
                wrong.get_file_info(BUCKET)
            except OSError:
                break
        else:
            pytest.fail("moto_server does not check credentials")
        no_creds = {k: v for k, v in _s3_env(auth_endpoint, HOME=str(tmp_path)).items()
                    if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
        cases = {
            "no bucket": (["sweep", "quickstart", "--storage", "s3://no-such-bucket/x"], _s3_env(endpoint),
                          "the bucket 'no-such-bucket' does not exist"),
            "no endpoint": (["sweep", "--resume", f"s3://{BUCKET}/x"],
                            _s3_env(f"http://127.0.0.1:{_free_port()}"), "cannot reach the endpoint http://127.0.0.1:"),
            "no credentials": (["sweep", "quickstart", "--storage", f"s3://{BUCKET}/x"], no_creds,
                               "no AWS credentials found"),
            "wrong credentials": (["sweep", "--resume", f"s3://{BUCKET}/x"],
                                  _s3_env(auth_endpoint, AWS_ACCESS_KEY_ID="AKIAWRONG"), "access denied"),
            "resume, not a sweep": (["sweep", "--resume", f"s3://{BUCKET}/nothing"], _s3_env(endpoint),
                                    "not a sweep (no sweep.json there"),
            "analyze, no bucket": (["analyze", "s3://no-such-bucket/x"], _s3_env(endpoint),
                                   "the bucket 'no-such-bucket' does not exist"),
            "launch slurm, no bucket": (["launch", "slurm", "quickstart", "--storage", "s3://no-such-bucket/x"],
                                        _s3_env(endpoint), "the bucket 'no-such-bucket' does not exist"),
        }
        # (the same check behind --storage and --resume; --resume skips loading a spec, which imports torch)
        procs = {name: subprocess.Popen([sys.executable, "-m", "pah", *args], env=env, cwd=tmp_path, text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for name, (args, env, _) in cases.items()}
        for name, p in procs.items():
            out, err = p.communicate(timeout=120)
            uri = next(a for a in cases[name][0] if a.startswith("s3://"))
            lines = err.strip().splitlines()
            assert p.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), (name, err)
            assert uri in lines[0] and cases[name][2] in lines[0], (name, lines[0])
            assert "sweep:" not in out, (name, out)  # before the sweep opened, so before any trial
        assert not (tmp_path / "s3:").exists()  # the old bug: a local folder named "s3:"
    finally:
        proc.kill()
        proc.wait()


def test_a_resume_resets_the_failure_count_of_errored_trials_in_a_bucket_snapshot(s3, monkeypatch):
    """`--resume` of a bucket sweep retries trials errored by a fault outside them with a fresh
    max_failures, as on a filesystem: the count in the newest Tune snapshot in the bucket is reset to 0,
    for those trials only, and the older snapshot is left as it was."""
    from sweeps.snapshot import fresh_failures_at

    endpoint, fs = s3
    for k, v in _s3_env(endpoint).items():
        if k.startswith("AWS_"):
            monkeypatch.setenv(k, v)
    exp = f"{BUCKET}/failures/tune/search"

    def snapshot(failures: dict[str, int]) -> bytes:
        data = [[json.dumps({"trial_id": t}), json.dumps({"num_failures": n})] for t, n in failures.items()]
        return json.dumps({"trial_data": data, "runner_data": {}, "stats": {"start_time": 1.0}}).encode()

    old, new = snapshot({"a": 3, "b": 3}), snapshot({"a": 3, "b": 3, "c": 1})
    for name, body in [("experiment_state-2026-12-01_10-00-00.json", old),
                       ("experiment_state-2026-12-01_11-00-00.json", new)]:
        with fs.open_output_stream(f"{exp}/{name}") as f:
            f.write(body)

    assert fresh_failures_at(f"s3://{exp}", {"a", "c"}) == 2
    got = json.loads(_read(fs, f"{exp}/experiment_state-2026-12-01_11-00-00.json"))
    counts = {json.loads(t)["trial_id"]: json.loads(m)["num_failures"] for t, m in got["trial_data"]}
    assert counts == {"a": 0, "b": 3, "c": 0}
    assert _read(fs, f"{exp}/experiment_state-2026-12-01_10-00-00.json") == old
    assert fresh_failures_at(f"s3://{exp}", {"a", "c"}) == 0  # nothing left to reset


def test_a_superseded_attempt_of_a_trial_writes_nothing_more(tmp_path, s3, monkeypatch):
    """Two attempts of one trial, as a partition leaves them: the first (on a node that was cut off and
    declared dead) runs on after the second has started elsewhere. Once the second has claimed the trial,
    the first's uploads raise ``Superseded`` and write nothing: its older log.txt never replaces the
    continuation's (seen on the netns cluster before the fence: a finished trial's log cut back to 3 tasks)."""
    from sweeps.trainable import Superseded, _TrialFiles

    endpoint, fs = s3
    for k, v in _s3_env(endpoint).items():
        monkeypatch.setenv(k, v)
    uri = f"s3://{BUCKET}/fence"
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "node-a"))  # each node's own scratch
    old = _TrialFiles(uri, "search", "t1")
    old.claim()
    old.out.mkdir(parents=True)
    (old.out / "log.txt").write_text("start tasks_done=0\ntrained task 1/5\n")
    old.push()  # the owner writes
    assert _read(fs, f"{BUCKET}/fence/trials/search/t1/log.txt").decode().count("trained") == 1

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "node-b"))  # the continuation, on another node
    new = _TrialFiles(uri, "search", "t1")
    assert new.out != old.out and (new.out / "log.txt").exists()  # it starts from what the bucket holds
    new.claim()
    (new.out / "log.txt").write_text((new.out / "log.txt").read_text() + "start tasks_done=1\ntrained task 2/5\n")
    new.push()

    (old.out / "log.txt").write_text("start tasks_done=0\ntrained task 1/5\ntrained task 2/5\ntrained task 3/5\n")
    with pytest.raises(Superseded, match="taken over by a later attempt"):
        old.push()  # the partition heals: the old attempt's next upload
    with pytest.raises(Superseded):
        old.fence()  # and its next report (Tune's checkpoint upload) is refused the same way
    log = _read(fs, f"{BUCKET}/fence/trials/search/t1/log.txt").decode()
    assert log.splitlines()[-2:] == ["start tasks_done=1", "trained task 2/5"], log  # the continuation's
    new.push()  # the owner still writes


def test_wandb_rows_of_a_trial_are_rebuilt_from_the_bucket(tmp_path, s3, monkeypatch):
    """A sweep on object storage whose head was lost: the new driver's staging copy holds neither the trial's
    journal of W&B rows nor its checkpoint (both were on the old head, or only ever in the bucket). The rows
    come back from the bucket: a finished trial's from its result.json, an unfinished one's from its newest
    Tune checkpoint there (tests/test_cloud_nodes.py loses a real head)."""
    import io

    import torch

    from pah import storage
    from sweeps.wandb_runs import task_rows

    endpoint, fs = s3
    for k, v in _s3_env(endpoint).items():
        monkeypatch.setenv(k, v)
    uri = f"s3://{BUCKET}/rebuilt"
    staging = tmp_path / "staging"
    storage.mark_staging(staging, uri)
    acc = [[0.9], [0.8, 0.95], [0.7, 0.9, 0.97]]
    result = {"acc_matrix": [row + [None] * (3 - len(row)) for row in acc], "val_matrix": []}
    storage.write_bytes(f"{uri}/trials/search/done1/result.json", json.dumps(result).encode())
    rows = task_rows(staging, "done1")
    assert [r["tasks_completed"] for r in rows] == [1, 2, 3] and [r["_step"] for r in rows] == [1, 2, 3]
    assert rows[-1]["avg_acc"] == pytest.approx((0.7 + 0.9 + 0.97) / 3)
    assert rows[1]["forgetting"] == pytest.approx(0.1)

    buf = io.BytesIO()
    torch.save({"acc_rows": acc[:2], "val_rows": [], "config": {"data": {"val_fraction": 0}}}, buf)
    older = io.BytesIO()
    torch.save({"acc_rows": acc[:1], "val_rows": [], "config": {"data": {"val_fraction": 0}}}, older)
    trial = f"{uri}/tune/search/pah_trial_half1_2_lr=0.002_2026-12-02"
    for index, state in enumerate((older, buf)):  # each with its meta.json, as a trial writes them
        storage.write_bytes(f"{trial}/checkpoint_{index:06d}/state.pt", state.getvalue())
        storage.write_bytes(f"{trial}/checkpoint_{index:06d}/meta.json",
                            json.dumps({"tasks_completed": index + 1, "state_bytes": len(state.getvalue())}).encode())
    # part-written by a node lost mid-upload: not the newest
    storage.write_bytes(f"{trial}/checkpoint_000002/meta.json", b'{"tasks_completed": 3, "state_bytes": 9}')
    other = f"{uri}/tune/search/pah_trial_other_3_lr=0.003/checkpoint_000009"
    storage.write_bytes(f"{other}/state.pt", b"not this")
    storage.write_bytes(f"{other}/meta.json", b'{"tasks_completed": 3}')
    stale = staging / "trials" / "search" / "half1" / "checkpoint" / "state.pt"  # the staging copy's, older
    stale.parent.mkdir(parents=True)
    stale.write_bytes(older.getvalue())
    rows = task_rows(staging, "half1")  # the newest complete checkpoint in the bucket: 2 tasks
    assert [r["tasks_completed"] for r in rows] == [1, 2]
    assert rows[-1]["avg_acc"] == pytest.approx((0.8 + 0.95) / 2)
    assert task_rows(staging, "never") == []
    assert task_rows(tmp_path / "not-staging", "done1") == []  # a sweep dir that mirrors no bucket


def test_the_newest_task_checkpoint_in_the_bucket_is_found_though_tune_never_heard_of_it(s3):
    """A restore from a snapshot older than a trial's last reports hands the trial no checkpoint (or an old
    one); its task checkpoints in the bucket are found all the same, the one with the most tasks, and the
    highest checkpoint index so that the next report writes a new dir (seen: a trial two tasks in started
    over from none after its head was lost); a dir a lost node left part-written is not one of them (seen: a
    trial took meta.json without state.pt for two tasks done, and trained from task 1)."""
    from sweeps.trainable import newest_checkpoint_in

    _, fs = s3
    trial = f"{BUCKET}/newest/tune/search/pah_trial_abc12345_4_train"
    assert newest_checkpoint_in(fs, trial) == (None, -1)  # nothing there yet
    for index, tasks in ((0, 1), (1, 2), (3, 1), (2, 0)):  # an older attempt's dir with a higher index; one unfinished
        d = f"{trial}/checkpoint_{index:06d}"
        fs.create_dir(d)
        if tasks:
            _put(fs, f"{d}/meta.json", json.dumps({"tasks_completed": tasks}).encode())
        _put(fs, f"{d}/state.pt", b"x" * tasks)
    _put(fs, f"{trial}/checkpoint_junk/meta.json", b'{"tasks_completed": 9}')  # not Tune's name: ignored
    # part-written by a node lost mid-upload: meta.json without state.pt, a state.pt short of its recorded size
    _put(fs, f"{trial}/checkpoint_000004/meta.json", b'{"tasks_completed": 5}')
    _put(fs, f"{trial}/checkpoint_000005/meta.json", b'{"tasks_completed": 4, "state_bytes": 100}')
    _put(fs, f"{trial}/checkpoint_000005/state.pt", b"xxx")
    best, top = newest_checkpoint_in(fs, trial)
    assert top == 5
    assert best is not None and best[0] == 2 and best[1].path.endswith("checkpoint_000001")
    with best[1].as_directory() as d:  # what the trial copies in: the files of that checkpoint
        assert json.loads((Path(d) / "meta.json").read_text()) == {"tasks_completed": 2}


def test_before_a_restore_a_half_uploaded_checkpoint_overwrites_nothing(s3, monkeypatch):
    """The head lost while a trial uploaded task 2's checkpoint: ``checkpoint_000001`` holds its meta.json
    alone, ``checkpoint_000000`` (task 1) is whole. Before the restore, a deleted checkpoint below a trial's
    highest gets a 0-task placeholder (Tune's snapshot may name it) and nothing there is written over: the
    copy of the highest-numbered checkpoint over the lower ones that this replaced put task 2's meta.json
    beside task 1's state, and the trial trained from task 1 (seen in CI and under load)."""
    from pah.storage import fill_missing_checkpoints_at
    from sweeps.trainable import newest_checkpoint_in

    endpoint, fs = s3
    for k, v in _s3_env(endpoint).items():
        monkeypatch.setenv(k, v)
    exp = f"{BUCKET}/restore/tune/search"

    cut = f"{exp}/pah_trial_aaaa0000_1_train_lr=0.002"
    _put(fs, f"{cut}/checkpoint_000000/state.pt", b"1")
    _put(fs, f"{cut}/checkpoint_000000/meta.json", b'{"tasks_completed": 1, "state_bytes": 1}')
    _put(fs, f"{cut}/checkpoint_000001/meta.json", b'{"tasks_completed": 2, "state_bytes": 2}')  # its state.pt never came
    gone = f"{exp}/pah_trial_bbbb0000_2_train_lr=0.003"  # num_to_keep=1 deleted 0-2
    _put(fs, f"{gone}/checkpoint_000003/state.pt", b"4444")
    _put(fs, f"{gone}/checkpoint_000003/meta.json", b'{"tasks_completed": 4, "state_bytes": 4}')
    before = {p: _read(fs, p) for p in (f"{cut}/checkpoint_000000/meta.json", f"{cut}/checkpoint_000000/state.pt",
                                               f"{cut}/checkpoint_000001/meta.json")}

    assert fill_missing_checkpoints_at(f"s3://{exp}") == 3
    assert {p: _read(fs, p) for p in before} == before  # nothing there written over
    best, top = newest_checkpoint_in(fs, cut)
    assert top == 1 and best is not None and best[0] == 1 and best[1].path.endswith("checkpoint_000000")
    for i in range(3):
        assert json.loads(_read(fs, f"{gone}/checkpoint_{i:06d}/meta.json")) == {"tasks_completed": 0}
    best, top = newest_checkpoint_in(fs, gone)
    assert top == 3 and best is not None and best[0] == 4 and best[1].path.endswith("checkpoint_000003")
    assert fill_missing_checkpoints_at(f"s3://{exp}") == 0  # a second restore: nothing more


def test_a_trial_pending_at_the_last_snapshot_finds_its_checkpoints_after_a_restore(s3, tmp_path, monkeypatch):
    """Tune names a trial's dir when the trial starts. A trial pending at the last snapshot that reached the
    bucket, started after it and lost with the head, is named anew by the restore (Tune's default name ends
    with the start time), beside its task checkpoints, and would find none. Named when Tune makes it (``trial_dirname``), the restored trial has its old dir on
    a fresh head; restored in the Ray session that named it, Tune adds a suffix, and the trial's checkpoints
    are found in the dir of its earlier attempt all the same (``other_dirs_of``), as in sweeps made before."""
    from copy import copy

    from ray.train._internal import storage as ray_storage
    from ray.tune import PlacementGroupFactory
    from ray.tune.experiment import Trial

    from sweeps.trainable import newest_checkpoint_in, other_dirs_of, trial_dirname

    _, fs = s3
    heads = iter(range(1, 100))
    session = [tmp_path / f"head{next(heads)}"]  # a Ray session's dir on the driver's node: Tune's staging dirs
    monkeypatch.setattr(ray_storage, "_get_ray_train_session_dir", lambda: str(session[0]))

    def started_then_restored(creator, *, fresh_head: bool) -> tuple[Trial, Trial]:
        storage = ray_storage.StorageContext(f"{BUCKET}/pending", "search", storage_filesystem=fs)
        trial = Trial("pah_trial", config={"train.lr": 0.002}, trial_id="e3510796", experiment_tag="3_train.lr=0.002",
                      storage=storage, stub=True, trial_dirname_creator=creator,
                      placement_group_factory=PlacementGroupFactory([{"CPU": 1}]))
        trial.create_placement_group_factory()  # as Tune does when it adds the trial
        snapshot, _ = trial.get_json_state()  # the last snapshot to reach the bucket: the trial is pending
        trial.init_local_path()  # it starts, and is named
        time.sleep(1.1)  # (Tune's default name holds the time, to the second)
        if fresh_head:
            session[0] = tmp_path / f"head{next(heads)}"
        restored = Trial.from_json_state(snapshot, stub=True)
        restored.set_storage(copy(restored.storage))
        restored.init_local_path()
        return trial, restored

    trial, restored = started_then_restored(trial_dirname, fresh_head=True)
    assert restored.storage.trial_dir_name == trial.storage.trial_dir_name == "pah_trial_e3510796_3_train.lr=0.002"
    assert restored.storage.trial_fs_path == trial.storage.trial_fs_path  # where its checkpoints are
    trial, restored = started_then_restored(None, fresh_head=True)  # Tune's default: named anew
    assert restored.storage.trial_dir_name != trial.storage.trial_dir_name
    trial, restored = started_then_restored(trial_dirname, fresh_head=False)  # the same session: a suffix
    assert restored.storage.trial_dir_name.startswith(trial.storage.trial_dir_name + "_")

    # the earlier attempt's task checkpoint, in its dir; another trial's, and a file, beside it
    for path in (f"{trial.storage.trial_fs_path}/checkpoint_000001", f"{BUCKET}/pending/search/pah_trial_0e351079_1_x"
                 f"/checkpoint_000003"):
        _put(fs, f"{path}/meta.json", b'{"tasks_completed": 2, "state_bytes": 2}')
        _put(fs, f"{path}/state.pt", b"22")
    _put(fs, f"{BUCKET}/pending/search/pah_trial_e3510796_file", b"not a dir")
    others = other_dirs_of(fs, restored.storage.trial_fs_path, "e3510796")
    assert trial.storage.trial_fs_path in others and restored.storage.trial_fs_path not in others
    assert all("_e3510796_" in o for o in others), others
    found = [newest_checkpoint_in(fs, o)[0] for o in others]
    assert [f[0] for f in found if f] == [2]
    assert other_dirs_of(fs, f"{BUCKET}/pending/search/unnamed", "e3510796") == []


def test_a_tune_checkpoint_holding_another_tasks_state_is_not_resumed_from(s3, tmp_path):
    """Tune's own checkpoint is checked as the stored ones are: an attempt cut off while it retried a report
    can write into the dir Tune recorded (seen in CI, the head lost: task 4's meta.json beside task 3's
    state; the trial logged ``start tasks_done=4`` and trained task 4 again). The newest whole one is taken."""
    from ray.train import Checkpoint

    from sweeps.trainable import _whole_tasks_in, newest_checkpoint_in, resume_from

    _, fs = s3
    trial = f"{BUCKET}/mixed/tune/search/pah_trial_abc12345_1_train"

    def put(index: int, tasks: int, state: bytes) -> Checkpoint:
        d = f"{trial}/checkpoint_{index:06d}"
        fs.create_dir(d)
        with fs.open_output_stream(f"{d}/meta.json") as f:
            f.write(json.dumps({"tasks_completed": tasks, "state_bytes": tasks}).encode())
        with fs.open_output_stream(f"{d}/state.pt") as f:
            f.write(state)
        return Checkpoint(path=d, filesystem=fs)

    put(2, 3, b"333")
    mixed = put(3, 4, b"333")  # Tune's: task 4's meta.json, task 3's state
    chosen = resume_from(mixed, newest_checkpoint_in(fs, trial)[0])
    assert chosen is not None and chosen.path.endswith("checkpoint_000002"), chosen
    with chosen.as_directory() as d:
        assert _whole_tasks_in(Path(d)) == 3
    whole = put(4, 4, b"4444")
    assert resume_from(whole, newest_checkpoint_in(fs, trial)[0]).path == whole.path  # Tune's, whole: taken
    assert resume_from(None, None) is None
    (tmp_path / "meta.json").write_text(json.dumps({"tasks_completed": 4, "state_bytes": 4}))
    (tmp_path / "state.pt").write_bytes(b"333")
    assert _whole_tasks_in(tmp_path) == 0  # on the node too: not what its meta.json names


def test_a_replaced_wandb_run_leaves_the_bucket_by_its_old_name(tmp_path, s3, monkeypatch):
    """A trial's W&B run reopened by a new driver (its head lost): the earlier run's folder is renamed to
    replaced-run-* in the staging copy, and goes from the bucket by its old name, or the bucket would hold
    two offline-run-* folders of one trial (seen in tests/test_cloud_nodes.py under load)."""
    from pah import storage
    from sweeps.wandb_runs import _forget_in_bucket

    endpoint, _ = s3
    for k, v in _s3_env(endpoint).items():
        monkeypatch.setenv(k, v)
    uri = f"s3://{BUCKET}/replaced"
    staging = tmp_path / "staging"
    storage.mark_staging(staging, uri)
    old = staging / "wandb" / "offline-run-20261202_185303-e877ed07"
    (old / "files").mkdir(parents=True)
    (old / "run-e877ed07.wandb").write_bytes(b"rows")
    (old / "files" / "config.yaml").write_text("a: 1\n")
    storage.upload(staging / "wandb", f"{uri}/wandb")
    other = f"{uri}/wandb/offline-run-20261202_185306-f2d4eb3b/run-f2d4eb3b.wandb"
    storage.write_bytes(other, b"another trial's")
    assert storage.read_bytes(f"{uri}/wandb/{old.name}/run-e877ed07.wandb") == b"rows"

    old.rename(old.with_name("replaced-run-20261202_185303-e877ed07"))
    _forget_in_bucket(str(staging), old)
    storage.upload(staging / "wandb", f"{uri}/wandb")
    assert storage.read_bytes(f"{uri}/wandb/{old.name}/run-e877ed07.wandb") is None
    assert storage.read_bytes(f"{uri}/wandb/{old.name}/files/config.yaml") is None
    assert storage.read_bytes(f"{uri}/wandb/replaced-run-20261202_185303-e877ed07/run-e877ed07.wandb") == b"rows"
    assert storage.read_bytes(other) == b"another trial's"  # nothing else
    _forget_in_bucket(str(tmp_path / "not-staging"), old)  # a sweep dir that mirrors no bucket: nothing to do


def test_a_bucket_sweep_tells_the_trials_a_lost_head_orphaned_from_unfinished_ones(s3, tmp_path, monkeypatch):
    """The driver's staging copy of a sweep on object storage holds none of Tune's snapshots. Where a trial dir
    has no end there, the newest snapshot in the bucket is fetched (that one only), and the summary calls a
    trial it does not know orphaned (started after the last snapshot of a head that was lost: no resume
    continues it) and one it knows unfinished (resumable); where every trial ended, nothing is fetched."""
    from analysis.sweep import phase_lines, sweep_trials
    from sweeps.driver import _snapshot_for_orphans

    endpoint, fs = s3
    for k, v in _s3_env(endpoint).items():
        if k.startswith("AWS_"):
            monkeypatch.setenv(k, v)
    exp = f"{BUCKET}/orphans/tune/search"
    older, newest = "experiment_state-2026-12-03_10-00-00.json", "experiment_state-2026-12-03_10-05-00.json"
    for name, ids in [(older, ["a1"]), (newest, ["a1", "b2"])]:
        data = [[json.dumps({"trial_id": t}), json.dumps({})] for t in ids]
        _put(fs, f"{exp}/{name}", json.dumps({"trial_data": data, "runner_data": {}, "stats": {}}).encode())

    def staging(name: str, trials: dict[str, list[str]]) -> Path:
        d = tmp_path / name
        (d / "sweep.json").parent.mkdir(parents=True)
        (d / "sweep.json").write_text("{}")
        for tid, files in trials.items():
            (d / "trials" / "search" / tid).mkdir(parents=True)
            for f in files:
                (d / "trials" / "search" / tid / f).write_text("{}")
        return d

    killed = staging("killed", {"a1": ["result.json"], "b2": ["params.json", "log.txt"], "c3": ["params.json", "log.txt"]})
    assert "2 unfinished (killed, resumable)" in phase_lines(sweep_trials(killed))[0]
    _snapshot_for_orphans(killed, f"s3://{exp}", "search")
    assert sorted(p.name for p in (killed / "tune" / "search").iterdir()) == [newest]
    lines = phase_lines(sweep_trials(killed))
    assert "3 trial(s): 1 finished, 1 unfinished (killed, resumable), 1 orphaned" in lines[0], lines
    assert any(ln.startswith("  orphaned: search/c3: ") for ln in lines), lines

    ended = staging("ended", {"a1": ["result.json"], "b2": ["result.json"]})
    _snapshot_for_orphans(ended, f"s3://{exp}", "search")
    assert not (ended / "tune").exists()
