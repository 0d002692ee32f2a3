"""Where a sweep lives: a directory (local or on a shared filesystem), or a prefix on object storage.

``--storage s3://bucket/prefix`` (or ``gs://...``, or any URI ``pyarrow.fs`` understands) keeps
the whole sweep under the prefix, so that no node of a cluster needs a shared filesystem:

- Ray Tune gets the URI itself (its experiment state and every trial's task checkpoints);
- each trial trains in a scratch dir on its own node and uploads its small files (log.txt,
  params.json, error.json, then result.json last) after every task and at its end;
- the driver works in a local staging copy of the sweep dir (sweep.json, spec.yaml, the
  trials' small files, optuna.db, wandb/, report.html) and uploads what it writes;
  resuming downloads that copy again, everything but Tune's dir and the checkpoints.

Credentials and endpoints come from where the cloud's own tools look (``AWS_ACCESS_KEY_ID``,
``AWS_PROFILE``, ``AWS_ENDPOINT_URL``, an instance role; ``GOOGLE_APPLICATION_CREDENTIALS``,
...); nothing here writes them anywhere. The filesystem is resolved from the URI on each
node, never pickled.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pah.errors import UserError

__all__ = ["is_uri", "join", "check", "resolve", "download", "upload", "exists", "staging_dir", "scratch_dir",
           "remote_of", "mark_staging", "fill_missing_checkpoints_at", "Mirror", "SKIP_DIRS",
           "download_newest"]

#: what a staging copy or `pah analyze` never downloads: Tune's own dir and the task checkpoints
SKIP_DIRS = ("tune", "checkpoint")
#: in a staging dir: the URI it mirrors (local only, never uploaded)
MARKER = ".pah-remote"

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_uri(path: str | Path | None) -> bool:
    """True for ``s3://...``, ``gs://...`` and the like; False for paths (and ``file://`` ones)."""
    return path is not None and bool(_URI.match(str(path))) and not str(path).startswith("file://")


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])


def resolve(uri: str, *, quick: bool = False) -> tuple[Any, str]:
    """(pyarrow filesystem, path inside it) for ``uri``; ``quick``: few retries and short timeouts."""
    import pyarrow.fs as pafs

    try:
        fs, path = pafs.FileSystem.from_uri(uri)
    except Exception as e:  # an unknown scheme, a malformed URI
        raise UserError(f"--storage {uri}: {_cause(e)}") from None
    if quick and isinstance(fs, pafs.S3FileSystem):
        # the same options (region, endpoint, credentials as resolved), failing in seconds, not minutes
        rebuild, (kwargs,) = fs.__reduce__()
        kwargs.update(connect_timeout=5.0, request_timeout=20.0,
                      retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=1))
        fs = rebuild(kwargs)
    return fs, path


def check(uri: str, option: str = "--storage", *, write: bool = True, probe: str = ".pah-write-test") -> None:
    """Fail (UserError) unless ``uri`` is writable (``write``: the object ``probe`` written and deleted) or
    exists: bucket there, credentials accepted, endpoint reachable; in seconds."""
    import pyarrow.fs as pafs

    fs, path = resolve(uri, quick=True)
    bucket = path.split("/", 1)[0]
    try:
        info = fs.get_file_info(bucket)
        if info.type == pafs.FileType.NotFound:
            raise UserError(f"{option} {uri}: the bucket {bucket!r} does not exist (create it first)")
        if not write:
            if fs.get_file_info(path).type == pafs.FileType.NotFound:
                raise UserError(f"{option} {uri}: nothing there")
            return
        probe = f"{path.rstrip('/')}/{probe}"
        with fs.open_output_stream(probe) as f:
            f.write(b"ok")
        fs.delete_file(probe)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"{option} {uri}: {_explain(e, uri)}") from None


def _cause(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _explain(e: BaseException, uri: str) -> str:
    text = _cause(e)
    low = text.lower()
    if any(s in low for s in ("network_connection", "could not connect", "couldn't connect", "resolve host",
                              "timed out", "timeout", "curlcode")):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        where = f"the endpoint {endpoint}" if endpoint and uri.startswith("s3") else "the storage endpoint"
        return f"cannot reach {where} ({text})"
    hint = _credential_hint(uri)
    if "access_denied" in low or "accessdenied" in low or "forbidden" in low or "403" in low:
        return f"access denied: the credentials are missing, wrong or without access to it{hint} ({text})"
    return f"cannot use it{hint} ({text})"


def _credential_hint(uri: str) -> str:
    """'; no credentials found (...)' when none of the usual sources is set (an instance role may still be)."""
    home = Path.home()
    if uri.startswith("s3"):
        found = any(os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE",
                                               "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                                               "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"))
        found = found or (home / ".aws" / "credentials").exists() or (home / ".aws" / "config").exists()
        return "" if found else ("; no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                                 "AWS_PROFILE, or give the nodes an instance role")
    if uri.startswith("gs"):
        found = bool(os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")) or (
            home / ".config" / "gcloud" / "application_default_credentials.json").exists()
        return "" if found else ("; no Google credentials found: set GOOGLE_APPLICATION_CREDENTIALS, run "
                                 "`gcloud auth application-default login`, or give the nodes a service account")
    return ""


def exists(uri: str) -> bool:
    import pyarrow.fs as pafs

    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def _list(fs: Any, path: str) -> list[Any]:
    import pyarrow.fs as pafs

    sel = pafs.FileSelector(path, recursive=True, allow_not_found=True)
    return [i for i in fs.get_file_info(sel) if i.type == pafs.FileType.File]


def download(uri: str, local: Path, *, skip_dirs: Iterable[str] = SKIP_DIRS,
             keep: Callable[[str], bool] | None = None, say: Callable[[str], None] | None = None) -> int:
    """Copy the files under ``uri`` into ``local`` (same layout), except those inside a ``skip_dirs``
    folder or refused by ``keep(relative path)``; returns how many. A storage that cannot be reached
    (or answers 503) is tried again with backoff, reported by ``say`` (stderr), see pah/retry.py."""
    from pah.retry import retrying

    return retrying(lambda: _download(uri, local, skip_dirs, keep), f"storage {uri}", what="downloading", say=say)


def _download(uri: str, local: Path, skip_dirs: Iterable[str], keep: Callable[[str], bool] | None) -> int:
    fs, root = resolve(uri)
    root = root.rstrip("/")
    skip = set(skip_dirs)
    todo = []
    for info in _list(fs, root):
        rel = info.path[len(root) + 1:]
        parts = rel.split("/")
        if skip & set(parts[:-1]) or parts[-1].startswith(".pah-") or (keep and not keep(rel)):
            continue
        todo.append((info.path, local / rel))

    def get(item: tuple[str, Path]) -> None:
        src, dst = item
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(dst.name + ".part")
        with fs.open_input_stream(src) as f, open(tmp, "wb") as out:
            while chunk := f.read(1 << 20):
                out.write(chunk)
        os.replace(tmp, dst)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(get, todo))
    return len(todo)


def upload(local: Path, uri: str, files: Iterable[str] | None = None, *, retry: bool = True,
           say: Callable[[str], None] | None = None, before: Callable[[], None] | None = None) -> int:
    """Copy ``local`` (a file, or the files under a dir, or just ``files`` relative to it) to ``uri``,
    in the order given (so a file listed last lands last); returns how many. ``retry``: a storage that
    cannot be reached is tried again with backoff, reported by ``say`` (stderr), see pah/retry.py.
    ``before``: called before each try (a check that may raise, e.g. that this writer still owns ``uri``)."""
    files = None if files is None else list(files)

    def once() -> int:
        if before is not None:
            before()
        return _upload(local, uri, files)

    if not retry:
        return once()
    from pah.retry import retrying

    return retrying(once, f"storage {uri}", what="uploading", say=say)


def read_bytes(uri: str) -> bytes | None:
    """The object at ``uri``, or None where there is none; tried once (errors are the caller's to retry)."""
    import pyarrow.fs as pafs

    fs, path = resolve(uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return None
    with fs.open_input_stream(path) as f:
        return f.read()


def download_newest(uri: str, local: Path, prefix: str) -> Path | None:
    """The newest (by name) file directly under folder ``uri`` whose name starts with ``prefix`` (Tune's
    ``experiment_state-<time>.json``), copied into ``local``; its local path, or None where there is none.
    Retried while the storage cannot be reached, as ``download`` is."""
    import pyarrow.fs as pafs

    from pah.retry import retrying

    def once() -> Path | None:
        fs, root = resolve(uri)
        infos = fs.get_file_info(pafs.FileSelector(root.rstrip("/"), recursive=False, allow_not_found=True))
        names = sorted(i.base_name for i in infos if i.type == pafs.FileType.File and i.base_name.startswith(prefix))
        if not names:
            return None
        data = read_bytes(join(uri, names[-1]))
        if data is None:  # replaced by a newer one meanwhile
            return None
        local.mkdir(parents=True, exist_ok=True)
        tmp = local / f".{names[-1]}.part"
        tmp.write_bytes(data)
        os.replace(tmp, local / names[-1])
        return local / names[-1]

    return retrying(once, f"storage {uri}", what="downloading")


def write_bytes(uri: str, data: bytes) -> None:
    """``data`` as the object at ``uri``; tried once."""
    fs, path = resolve(uri)
    with fs.open_output_stream(path) as out:
        out.write(data)


def delete_tree(uri: str) -> None:
    """Every object under ``uri`` (a folder's), if any; tried once. Uploads add and replace objects but never
    remove them: a local folder renamed must go from the bucket by its old name too."""
    fs, path = resolve(uri)
    try:
        fs.delete_dir(path)
    except FileNotFoundError:
        pass


def _upload(local: Path, uri: str, files: Iterable[str] | None) -> int:
    fs, root = resolve(uri)
    root = root.rstrip("/")
    if local.is_file():
        pairs = [(local, root)]
    else:
        rels = list(files) if files is not None else sorted(
            str(p.relative_to(local)) for p in local.rglob("*") if p.is_file() and not p.name.startswith(".pah-"))
        pairs = [(local / r, f"{root}/{r}") for r in rels if (local / r).is_file()]

    def put(item: tuple[Path, str]) -> None:
        src, dst = item
        with open(src, "rb") as f, fs.open_output_stream(dst) as out:
            while chunk := f.read(1 << 20):
                out.write(chunk)

    if files is not None:  # in order
        for pair in pairs:
            put(pair)
    else:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(put, pairs))
    return len(pairs)


def fill_missing_checkpoints_at(exp_uri: str) -> int:
    """Before a restore from object storage: put an empty placeholder (``meta.json`` of 0 tasks) where a
    trial's ``checkpoint_NNNNNN`` below its highest is gone; returns how many were written.

    Tune's experiment snapshot may name a checkpoint that ``CheckpointConfig(num_to_keep=1)`` has deleted
    since, and Tune would fail that trial for good. The trial then resumes from the newest complete
    checkpoint in storage (``sweeps.trainable.newest_checkpoint_in``), as on a filesystem (sweeps/snapshot.py).
    Nothing that is there is written over: this once copied the highest-numbered checkpoint over the
    lower ones, and a head lost mid-upload made that one a ``meta.json`` alone, which then replaced the
    ``meta.json`` of the whole checkpoint below it (seen in CI: a trial two tasks in trained from task 1).
    """
    from pah.retry import retrying

    return retrying(lambda: _fill_missing_checkpoints(exp_uri), f"storage {exp_uri}", what="checking checkpoints")


def _fill_missing_checkpoints(exp_uri: str) -> int:
    fs, root = resolve(exp_uri)
    root = root.rstrip("/")
    ckpts: dict[str, set[int]] = {}
    for info in _list(fs, root):
        parts = info.path[len(root) + 1:].split("/")
        if len(parts) >= 3 and re.fullmatch(r"checkpoint_\d{6}", parts[1]):
            ckpts.setdefault(parts[0], set()).add(int(parts[1][11:]))
    n = 0
    for trial, present in ckpts.items():
        for i in sorted(set(range(max(present))) - present):
            with fs.open_output_stream(f"{root}/{trial}/checkpoint_{i:06d}/meta.json") as f:
                f.write(b'{"tasks_completed": 0}\n')
            n += 1
    return n


class Mirror:
    """Uploads what changed (size or mtime) in some files and folders of a staging dir, at most every
    ``every_s`` seconds: the driver's W&B runs and Optuna copy reach the bucket while a phase runs, so
    a driver killed mid-phase loses at most that much of them. Picklable (Tune keeps its callbacks)."""

    def __init__(self, local: str, uri: str, paths: tuple[str, ...], every_s: float = 30.0) -> None:
        self.local, self.uri, self.paths, self.every_s = local, uri, paths, every_s
        self._sent: dict[str, tuple[int, int]] = {}
        self._last = 0.0
        self._outage = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_outage": None}  # its reporter prints through a lambda: not pickled

    def maybe_sync(self, *, force: bool = False) -> None:
        import time

        if not force and abs(time.time() - self._last) < self.every_s:  # wall time: it is pickled with Tune's state
            return
        self._last = time.time()
        root = Path(self.local)
        changed = []
        for rel in self.paths:
            p = root / rel
            for f in ([p] if p.is_file() else sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else []):
                st = f.stat()
                key = str(f.relative_to(root))
                if self._sent.get(key) != (st.st_size, st.st_mtime_ns):
                    changed.append(key)
                    self._sent[key] = (st.st_size, st.st_mtime_ns)
        if changed:
            from pah.retry import Outage, transient

            if getattr(self, "_outage", None) is None:  # one per outage, said every 30 s while it lasts (not pickled state)
                self._outage = Outage(f"storage {self.uri}", what="uploading the driver's files",
                                      say=lambda line: print(line, flush=True))
            try:
                upload(root, self.uri, changed, retry=False)  # never blocks the driver: the next sync tries again
            except OSError as e:  # the next sync (or the phase's end) tries again
                for key in changed:
                    self._sent.pop(key, None)
                if transient(e):
                    self._outage.failed(e)
                else:
                    print(f"note: could not upload to {self.uri} ({_cause(e)})", flush=True)
            else:
                self._outage.ok()


def _tag(uri: str) -> str:
    return hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:12]


def staging_dir(uri: str) -> Path:
    """The driver's local copy of the sweep at ``uri``: the same path for the same URI (sweep.json
    keeps candidate dirs as paths, so a resumed driver finds them where they were)."""
    return Path(tempfile.gettempdir()) / "pah-sweeps" / _tag(uri) / uri.rstrip("/").rsplit("/", 1)[-1]


def scratch_dir(sweep_uri: str, phase: str, trial_id: str) -> Path:
    """Where a trial of the sweep at ``sweep_uri`` trains, on whatever node it runs."""
    return Path(tempfile.gettempdir()) / "pah-trials" / _tag(sweep_uri) / phase / trial_id


def mark_staging(local: Path, uri: str) -> None:
    local.mkdir(parents=True, exist_ok=True)
    (local / MARKER).write_text(uri + "\n")


def remote_of(sweep_dir: str | Path) -> str | None:
    """The URI a staging dir mirrors; None for a sweep dir that is the sweep itself."""
    try:
        return (Path(sweep_dir) / MARKER).read_text().strip() or None
    except OSError:
        return None
