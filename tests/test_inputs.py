"""Every user input is checked at the edge: bad input is exit 2, one `error:` line naming it, nothing written.

One table of cases over all five commands (config and spec files, --set values, paths),
run through the real command line in-process (``pah.cli.main``: the same parser, checks
and exit-code mapping as the installed ``pah``), and a few through a subprocess to prove
the exit code and stderr end to end. Each case runs in an empty working directory that
must still be empty afterwards, next to an input folder that must be unchanged.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

# --------------------------------------------------------------------------- inputs


def _nested(levels: int) -> str:
    return "a:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, levels)) + "  " * levels + "x: 1\n"


def _billion_laughs() -> str:
    lines = ["a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    for i in range(8):
        prev, cur = chr(97 + i), chr(98 + i)
        lines.append(f"{cur}: &{cur} [" + ", ".join([f"*{prev}"] * 10) + "]")
    return "\n".join(lines) + "\n"


FILES: dict[str, str | bytes] = {
    "notutf8.yaml": b"seed: \xff\xfe 1\n",
    "empty.yaml": "",
    "comments.yaml": "# nothing but a comment\n",
    "list.yaml": "- seed: 1\n",
    "scalar.yaml": "split-digits-pah\n",
    "tag.yaml": "seed: !!python/object/apply:os.system ['true']\n",
    "custom-tag.yaml": "seed: !env HOME\n",
    "bad-syntax.yaml": "seed: [1, 2\n",
    "deep.yaml": _nested(30),
    "deep-brackets.yaml": "seed: " + "[" * 5000 + "]" * 5000 + "\n",
    "huge.yaml": "#" * (2 << 20) + "\n",
    "laughs.yaml": _billion_laughs(),
    "int-key.yaml": "1: one\n",
    "unknown-preset.yaml": "preset: split-digits-nope\n",
    "preset-list.yaml": "preset: [split-digits-pah]\n",
    "unknown-key.yaml": "preset: split-digits-pah\ntrian: {epochs_per_task: 1}\n",
    "wrong-type.yaml": "preset: split-digits-pah\ntrain: {batch_size: big}\n",
    "spec-bad-dist.yaml": "base: split-digits-pah\nspace: {train.lr: {normal: [0, 1]}}\n",
    "spec-no-base.yaml": "space: {train.lr: {uniform: [0.001, 0.01]}}\n",
    "afile": "not a directory\n",
    "corrupt-sweep/sweep.json": "{not json",
}


@pytest.fixture
def env(tmp_path, monkeypatch):
    """``in/``: the bad inputs; ``work/``: the empty working directory every case runs in."""
    inp = tmp_path / "in"
    for name, content in FILES.items():
        p = inp / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content if isinstance(content, bytes) else content.encode())
    (inp / "adir.yaml").mkdir()
    (inp / "not-a-sweep").mkdir()
    (inp / "dangling.yaml").symlink_to(inp / "nowhere.yaml")
    (inp / "loop.yaml").symlink_to(inp / "loop.yaml")
    os.mkfifo(inp / "fifo.yaml")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("WANDB_MODE", "offline")
    return inp, work


def _snapshot(d: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(d)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in d.rglob("*")}


# --------------------------------------------------------------------------- the table
# (id, argv with IN for the input folder, words the one error line must contain)

T = "train"
CASES: list[tuple[str, list[str], list[str]]] = [
    # ---- pah train: the config file
    ("train-not-utf8", [T, "IN/notutf8.yaml"], ["notutf8.yaml", "not UTF-8"]),
    ("train-empty-file", [T, "IN/empty.yaml"], ["empty.yaml", "empty"]),
    ("train-only-comments", [T, "IN/comments.yaml"], ["comments.yaml", "empty"]),
    ("train-top-level-list", [T, "IN/list.yaml"], ["list.yaml", "mapping", "list"]),
    ("train-top-level-scalar", [T, "IN/scalar.yaml"], ["scalar.yaml", "mapping"]),
    ("train-python-tag", [T, "IN/tag.yaml"], ["tag.yaml", "not valid YAML", "python/object"]),
    ("train-custom-tag", [T, "IN/custom-tag.yaml"], ["custom-tag.yaml", "!env"]),
    ("train-bad-syntax", [T, "IN/bad-syntax.yaml"], ["bad-syntax.yaml", "not valid YAML", "line"]),
    ("train-nested-30-levels", [T, "IN/deep.yaml"], ["deep.yaml", "nested too deeply"]),
    ("train-nested-5000-brackets", [T, "IN/deep-brackets.yaml"], ["deep-brackets.yaml", "nested too deeply"]),
    ("train-2-mib-file", [T, "IN/huge.yaml"], ["huge.yaml", "too large"]),
    ("train-billion-laughs", [T, "IN/laughs.yaml"], ["laughs.yaml", "too large", "aliases"]),
    ("train-non-string-key", [T, "IN/int-key.yaml"], ["int-key.yaml", "key 1", "not a string"]),
    ("train-directory-as-config", [T, "IN/adir.yaml"], ["adir.yaml", "is a directory"]),
    ("train-missing-config", [T, "IN/missing.yaml"], ["missing.yaml", "does not exist"]),
    ("train-dangling-symlink", [T, "IN/dangling.yaml"], ["dangling.yaml", "does not exist"]),
    ("train-symlink-loop", [T, "IN/loop.yaml"], ["loop.yaml", "cannot read"]),
    ("train-fifo-as-config", [T, "IN/fifo.yaml"], ["fifo.yaml", "not a regular file"]),
    ("train-unknown-preset-in-file", [T, "IN/unknown-preset.yaml"], ["nope"]),
    ("train-preset-not-a-name", [T, "IN/preset-list.yaml"], ["preset", "split-digits-pah"]),
    ("train-unknown-key-in-file", [T, "IN/unknown-key.yaml"], ["trian", "valid keys"]),
    ("train-wrong-type-in-file", [T, "IN/wrong-type.yaml"], ["train.batch_size", "big", "int"]),
    ("train-unknown-preset", [T, "split-digits-nope"], ["nope", "valid"]),
    # ---- pah train: --set values
    ("set-batch-1e20", [T, "--set", "train.batch_size=99999999999999999999"],
     ["train.batch_size", "99999999999999999999", "1048576"]),
    ("set-batch-above-limit", [T, "--set", "train.batch_size=1048577"], ["train.batch_size", "1048577"]),
    ("set-batch-zero", [T, "--set", "train.batch_size=0"], ["train.batch_size", "0"]),
    ("set-batch-float", [T, "--set", "train.batch_size=1.5"], ["train.batch_size", "1.5", "int"]),
    ("set-batch-list", [T, "--set", "train.batch_size=[1, 2]"], ["train.batch_size", "[1, 2]"]),
    ("set-batch-text", [T, "--set", "train.batch_size=lots"], ["train.batch_size", "lots"]),
    ("set-eval-batch-1e20", [T, "--set", "train.eval_batch_size=99999999999999999999"], ["train.eval_batch_size"]),
    ("set-lr-inf", [T, "--set", "train.lr=.inf"], ["train.lr", "finite"]),
    ("set-lr-nan", [T, "--set", "train.lr=.nan"], ["train.lr", "nan"]),
    ("set-lr-1e999", [T, "--set", "train.lr=1e999"], ["train.lr", "finite"]),
    ("set-lr-negative", [T, "--set", "train.lr=-0.1"], ["train.lr", "-0.1"]),
    ("set-seed-negative", [T, "--set", "seed=-1"], ["seed", "-1"]),
    ("set-seed-above-32-bits", [T, "--set", "seed=4294967296"], ["seed", "4294967296"]),
    ("set-epochs-absurd", [T, "--set", "train.epochs_per_task=1000000000"], ["train.epochs_per_task", "1000000000"]),
    ("set-val-fraction", [T, "--set", "data.val_fraction=1.5"], ["data.val_fraction", "1.5"]),
    ("set-val-fraction-leaves-no-training-image", [T, "--set", "data.val_fraction=0.999"],
     ["data.val_fraction", "0.999", "without a training image"]),
    ("set-image-size-absurd", [T, "synthetic-pah", "--set", "data.image_size=100000"], ["data.image_size", "100000"]),
    ("set-num-tasks-1e23", [T, "--set", "data.num_tasks=99999999999999999999999"], ["data.num_tasks"]),
    ("set-method-int-1e20", [T, "--set", "method.prototype_size=99999999999999999999"],
     ["method.prototype_size", "64 bits"]),
    ("set-unknown-key", [T, "--set", "train.bogus=1"], ["train.bogus", "valid keys"]),
    ("set-value-not-a-section", [T, "--set", "train=3"], ["train", "mapping"]),
    ("set-no-equals", [T, "--set", "train.batch_size"], ["train.batch_size", "KEY=VALUE"]),
    ("set-empty-key-part", [T, "--set", "train..lr=0.1"], ["train..lr", "KEY=VALUE"]),
    ("set-key-with-newline", [T, "--set", "train.lr\nx=1"], ["train.lr"]),
    ("set-bool-as-int", [T, "--set", "data.download=2"], ["data.download", "bool"]),
    ("set-unknown-method", [T, "--set", "method.name=nope"], ["nope", "pah"]),
    ("set-unknown-backbone", [T, "--set", "model.backbone=vgg99"], ["vgg99"]),
    # ---- pah train: paths and options
    ("train-out-is-a-file", [T, "--out", "IN/afile"], ["--out", "afile", "is a file"]),
    ("train-out-under-a-file", [T, "--out", "IN/afile/trial"], ["--out", "afile", "not a directory"]),
    ("train-bad-device", [T, "--device", "tpu"], ["--device", "tpu"]),
    # ---- pah sweep
    ("sweep-spec-not-utf8", ["sweep", "IN/notutf8.yaml"], ["spec file", "notutf8.yaml", "not UTF-8"]),
    ("sweep-spec-empty", ["sweep", "IN/empty.yaml"], ["spec file", "empty.yaml", "empty"]),
    ("sweep-spec-list", ["sweep", "IN/list.yaml"], ["list.yaml", "mapping"]),
    ("sweep-spec-python-tag", ["sweep", "IN/tag.yaml"], ["tag.yaml", "python/object"]),
    ("sweep-spec-billion-laughs", ["sweep", "IN/laughs.yaml"], ["laughs.yaml", "too large"]),
    ("sweep-spec-is-a-directory", ["sweep", "IN/adir.yaml"], ["adir.yaml", "is a directory"]),
    ("sweep-spec-missing", ["sweep", "IN/missing.yaml"], ["missing.yaml", "does not exist"]),
    ("sweep-spec-no-base", ["sweep", "IN/spec-no-base.yaml"], ["spec.base", "required"]),
    ("sweep-spec-bad-distribution", ["sweep", "IN/spec-bad-dist.yaml"], ["spec.space.train.lr", "normal"]),
    ("sweep-num-samples-1e20", ["sweep", "quickstart", "--set", "num_samples=99999999999999999999"],
     ["spec.num_samples", "100000"]),
    ("sweep-max-concurrent-zero", ["sweep", "quickstart", "--set", "max_concurrent=0"], ["spec.max_concurrent", "0"]),
    ("sweep-base-batch-1e20", ["sweep", "quickstart", "--set", "train.batch_size=99999999999999999999"],
     ["train.batch_size", "1048576"]),
    ("sweep-seed-out-of-range", ["sweep", "quickstart", "--set", "confirm.seeds=[-1]"], ["spec.confirm.seeds", "-1"]),
    ("sweep-cpus-absurd", ["sweep", "quickstart", "--set", "resources.cpus=100000"], ["spec.resources.cpus", "100000"]),
    ("sweep-resume-missing", ["sweep", "--resume", "IN/missing-sweep"], ["--resume", "missing-sweep", "does not exist"]),
    ("sweep-resume-a-file", ["sweep", "--resume", "IN/afile"], ["--resume", "afile", "is a file"]),
    ("sweep-resume-not-a-sweep", ["sweep", "--resume", "IN/not-a-sweep"], ["--resume", "not-a-sweep", "sweep.json"]),
    ("sweep-resume-corrupt-state", ["sweep", "--resume", "IN/corrupt-sweep"], ["--resume", "corrupt-sweep", "sweep.json"]),
    ("sweep-storage-is-a-file", ["sweep", "quickstart", "--storage", "IN/afile"], ["--storage", "afile", "is a file"]),
    ("sweep-name-outside-storage", ["sweep", "quickstart", "--name", "../elsewhere"], ["--name", "../elsewhere"]),
    ("sweep-name-is-a-file", ["sweep", "quickstart", "--storage", "IN", "--name", "afile"], ["--name", "afile", "is a file"]),
    ("sweep-val-fraction-leaves-no-training-image", ["sweep", "quickstart", "--set", "data.val_fraction=0.999"],
     ["data.val_fraction", "0.999", "without a training image"]),
    ("sweep-name-dotdot", ["sweep", "quickstart", "--name", ".."], ["--name", "'..'"]),
    ("sweep-bad-address", ["sweep", "quickstart", "--address", "not an address"], ["--address", "not an address"]),
    # ---- pah launch (checks made before SLURM or Ray is asked anything)
    ("launch-spec-not-utf8", ["launch", "slurm", "IN/notutf8.yaml"], ["notutf8.yaml", "not UTF-8"]),
    ("launch-spec-empty", ["launch", "ray", "IN/empty.yaml", "--address", "http://127.0.0.1:1", "--storage", "/x"],
     ["empty.yaml", "empty"]),
    ("launch-nodes-1e20", ["launch", "slurm", "quickstart", "--nodes", "99999999999999999999"],
     ["--nodes", "99999999999999999999"]),
    ("launch-cpus-zero", ["launch", "slurm", "quickstart", "--cpus-per-task", "0"], ["--cpus-per-task", "0"]),
    ("launch-time-zero", ["launch", "slurm", "quickstart", "--time", "0"], ["--time", "0"]),
    ("launch-mem-nan", ["launch", "slurm", "quickstart", "--mem-gb", "nan"], ["--mem-gb", "nan"]),
    ("launch-storage-is-a-file", ["launch", "slurm", "quickstart", "--storage", "IN/afile"], ["--storage", "is a file"]),
    ("launch-name-dotdot", ["launch", "slurm", "quickstart", "--name", ".."], ["--name", "'..'"]),
    ("launch-batch-1e20", ["launch", "slurm", "quickstart", "--set", "train.batch_size=99999999999999999999"],
     ["train.batch_size"]),
    ("launch-status-not-a-job-id", ["launch", "status", "12;rm"], ["JOB", "12;rm"]),
    ("launch-cancel-not-a-job-id", ["launch", "cancel", "../x"], ["JOB", "../x"]),
    # ---- pah analyze
    ("analyze-missing-dir", ["analyze", "IN/missing-dir"], ["missing-dir"]),
    ("analyze-out-is-a-directory", ["analyze", "IN", "--out", "IN/adir.yaml"], ["--out", "is a directory"]),
    ("analyze-out-under-a-file", ["analyze", "IN", "--out", "IN/afile/table.md"], ["--out", "not a directory"]),
    ("analyze-plots-is-a-file", ["analyze", "IN", "--plots", "IN/afile"], ["--plots", "is a file"]),
    ("analyze-bad-format", ["analyze", "IN", "--format", "xml"], ["--format", "xml"]),
    # ---- pah bench
    ("bench-batch-1e20", ["bench", "--batch-size", "99999999999999999999"], ["--batch-size", "1048576"]),
    ("bench-batch-zero", ["bench", "--batch-size", "0"], ["--batch-size", "0"]),
    ("bench-steps-zero", ["bench", "--steps", "0"], ["--steps", "0"]),
    ("bench-tasks-absurd", ["bench", "--tasks", "100000"], ["--tasks", "100000"]),
    ("bench-json-is-a-directory", ["bench", "--json", "IN"], ["--json", "is a directory"]),
    ("bench-json-under-a-file", ["bench", "--json", "IN/afile/out.json"], ["--json", "not a directory"]),
    ("bench-unknown-method", ["bench", "--method", "nope", "--device", "cpu"], ["nope"]),
    ("bench-set-inf", ["bench", "--backbone", "small-cnn", "--device", "cpu", "--set", "train.lr=.inf"],
     ["train.lr", "finite"]),
]


def _argv(argv: list[str], inp: Path) -> list[str]:
    return [a.replace("IN", str(inp)) if a.startswith("IN") else a for a in argv]


def _check(code: int, out: str, err: str, words: list[str], inp: Path, work: Path, before: dict) -> None:
    lines = err.splitlines()
    assert code == 2, f"exit {code}\nstdout: {out}\nstderr: {err}"
    assert len(lines) == 1 and lines[0].startswith("error:"), f"want one error: line, got:\n{err}"
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], f"{w!r} not in {lines[0]!r}"
    assert not list(work.iterdir()), f"written: {list(work.rglob('*'))}"
    assert _snapshot(inp) == before, "the inputs changed"


def test_the_table_is_large_enough():
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("argv, words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_exit_2_one_error_line_nothing_written(argv, words, env, capsys):
    from pah.cli import main

    inp, work = env
    before = _snapshot(inp)
    try:
        code = main(_argv(argv, inp))
    except SystemExit as e:  # argparse's own errors
        code = e.code
    out, err = capsys.readouterr()
    _check(code, out, err, words, inp, work, before)


SUBPROCESS = ["train-not-utf8", "set-batch-1e20", "sweep-resume-corrupt-state", "bench-json-is-a-directory",
              "analyze-plots-is-a-file"]


def test_end_to_end_through_the_installed_command(env):
    """The same through the real ``pah`` executable, all started at once (each pays ~2 s of imports)."""
    inp, work = env
    exe = Path(sys.executable).with_name("pah")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "pah"]
    cases = {c[0]: c for c in CASES}
    before = _snapshot(inp)
    procs = {name: subprocess.Popen([*cmd, *_argv(cases[name][1], inp)], cwd=work, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    env={**os.environ, "PYTHONPATH": str(ROOT)})
             for name in SUBPROCESS}
    for name, p in procs.items():
        out, err = p.communicate(timeout=300)
        _check(p.returncode, out, err, cases[name][2], inp, work, before)


def test_a_batch_larger_than_a_task_is_a_warning_and_the_trial_trains_full_batch(tmp_path, capsys):
    """Not an error (see pah train --help): the task trains full-batch, and stderr says so."""
    from pah.cli import main

    out = tmp_path / "trial"
    code = main(["train", "split-digits-finetune", "--set", "train.batch_size=100000",
                 "--set", "train.epochs_per_task=1", "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 0, err
    (line,) = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert "train.batch_size=100000" in line and "5 of 5 task(s)" in line and "full-batch" in line
    assert (out / "result.json").exists()
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "A batch larger than a task's training set is a warning" in " ".join(capsys.readouterr().out.split())


def test_out_of_memory_on_cpu_is_one_error_line(tmp_path):
    """A dataset too large for the memory there is (here an 8 GiB address-space limit: a 4096-pixel
    synthetic CIFAR-100 needs 40 GB for its class templates alone) is exit 1, one error: line."""
    import resource

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))

    r = subprocess.run([sys.executable, "-m", "pah", "train", "synthetic-finetune", "--set", "data.image_size=4096",
                        "--out", str(tmp_path / "t"), "--device", "cpu", "--no-progress"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300, preexec_fn=limit,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    lines = r.stderr.splitlines()
    assert r.returncode == 1, r.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: out of memory"), r.stderr[-3000:]
    assert "train.batch_size" in lines[0] and "Traceback" not in r.stderr


@pytest.mark.ci_may_skip
def test_a_read_only_default_storage_is_one_error_line_naming_it(tmp_path):
    """`pah sweep` without --storage writes under runs/sweeps: a read-only one is named before anything starts."""
    runs = tmp_path / "runs"
    runs.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(runs)], capture_output=True).returncode:
        pytest.skip("cannot mount a read-only tmpfs here (needs root)")
    try:
        r = subprocess.run([sys.executable, "-m", "pah", "sweep", "quickstart"], cwd=tmp_path, capture_output=True,
                           text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    finally:
        subprocess.run(["umount", str(runs)], check=True)
    lines = r.stderr.splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert lines[0].startswith("error: --storage runs/sweeps: cannot write in") and str(runs) in lines[0]
