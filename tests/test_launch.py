"""launch/ without a cluster: resource translation, CLI errors, cloud templates checked by Ray's validators."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import run_pah

TEMPLATES = Path(__file__).resolve().parents[1] / "launch" / "templates"


def test_pah_cli_imports_neither_submitit_nor_ray():
    code = "import sys, pah.cli; pah.cli.build_parser(); print(sorted(m for m in ('submitit', 'ray') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_resources_translate_to_submitit_parameters():
    from launch.slurm import SlurmResources

    r = SlurmResources(partition="gpu", nodes=2, gpus_per_node=4, cpus_per_task=16, time_min=600, mem_gb=64,
                       account="lab", qos="high", constraint="a100", sbatch={"exclusive": "", "gres-flags": "enforce-binding"})
    p = r.submitit_parameters(job_name="pah-x")
    assert p["nodes"] == 2 and p["tasks_per_node"] == 1 and p["cpus_per_task"] == 16 and p["gpus_per_node"] == 4
    assert p["timeout_min"] == 600 and p["mem_gb"] == 64 and p["slurm_job_name"] == "pah-x"
    assert (p["slurm_partition"], p["slurm_account"], p["slurm_qos"], p["slurm_constraint"]) == ("gpu", "lab", "high", "a100")
    assert p["slurm_additional_parameters"] == {"exclusive": True, "gres_flags": "enforce-binding"}
    assert p["slurm_signal_delay_s"] == 90
    # a short job still gets its warning before the limit, not after
    assert SlurmResources(time_min=1).submitit_parameters(job_name="j")["slurm_signal_delay_s"] == 15
    assert "gpus_per_node" not in SlurmResources().submitit_parameters(job_name="j")


def test_sbatch_reason_is_one_line():
    from launch.slurm import _sbatch_reason

    stderr = ("sbatch: error: invalid partition specified: nope\n"
              "sbatch: error: Batch job submission failed: Invalid partition name specified")
    assert _sbatch_reason(stderr) == ("invalid partition specified: nope; "
                                      "Batch job submission failed: Invalid partition name specified")
    assert _sbatch_reason("sbatch: unrecognized option '--x=1'\nTry \"sbatch --help\" for more information") == \
        "sbatch: unrecognized option '--x=1'"


@pytest.mark.parametrize("args, words", [
    (["launch", "slurm", "quickstart", "--nodes", "0"], ["--nodes", "at least 1"]),
    (["launch", "slurm", "quickstart", "--gpus-per-node", "-1"], ["--gpus-per-node"]),
    (["launch", "slurm", "quickstart", "--sbatch", "novalue"], ["KEY=VALUE"]),
    (["launch", "slurm", "no-such-spec"], ["no-such-spec"]),
    (["launch", "slurm", "quickstart", "--set", "num_samples=0"], ["num_samples"]),
    (["launch", "slurm", "quickstart", "--name", "a/b"], ["--name"]),
    (["launch", "slurm", "--probe", "quickstart"], ["--probe"]),
    (["launch", "slurm"], ["SPEC"]),
    (["launch", "ray", "quickstart"], ["--address"]),
    (["launch", "ray", "quickstart", "--address", "127.0.0.1:6379"], ["http://"]),
    (["launch", "ray", "quickstart", "--address", "http://127.0.0.1:1", "--storage", "rel/dir"], ["--storage"]),
])
def test_bad_input_is_exit_2_with_one_error_line(args, words, tmp_path, monkeypatch, capsys):
    from pah.cli import main

    monkeypatch.chdir(tmp_path)
    storage = [] if "--storage" in args else ["--storage", str(tmp_path / "s") if args[1] == "slurm" else "~/x"]
    try:
        code = main([*args, *storage])
    except SystemExit as e:  # argparse's own errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert all(w in lines[0] for w in words), lines[0]
    assert not list(tmp_path.iterdir())


def test_launch_help_names_every_backend():
    r = run_pah("launch", "--help")
    assert r.returncode == 0 and all(w in r.stdout for w in ("slurm", "ray", "status", "cancel"))


@pytest.mark.parametrize("name", ["aws-gpu", "gcp-gpu"])
def test_cluster_launcher_templates_pass_rays_validation(name):
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((TEMPLATES / f"{name}.yaml").read_text())
    config = prepare_config(copy.deepcopy(raw))  # what `ray up` does before validating
    validate_config(config)
    types = config["available_node_types"]
    assert any(t["resources"].get("GPU", 0) >= 1 for t in types.values()), "no GPU node type"
    assert types[config["head_node_type"]]["resources"].get("CPU") == 0  # trials stay off the head
    assert any("pah[sweep]" in c for c in config["setup_commands"])  # every node installs this package
    assert config["file_mounts"] == {"~/pah": "."}
    bad = copy.deepcopy(raw)
    bad["available_node_types"]["head"]["typo_field"] = 1
    with pytest.raises(Exception, match="typo_field"):
        validate_config(prepare_config(bad))


def test_kuberay_manifest_is_a_valid_raycluster():
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr
    from ray.autoscaler._private.util import prepare_config, validate_config

    docs = list(yaml.safe_load_all((TEMPLATES / "kuberay.yaml").read_text()))
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) == {"RayCluster", "ServiceAccount"}
    cr = kinds["RayCluster"]
    assert cr["apiVersion"] == "ray.io/v1" and cr["metadata"]["annotations"]["ray.io/overwrite-container-cmd"] == "true"
    pods = [cr["spec"]["headGroupSpec"]["template"]] + [g["template"] for g in cr["spec"]["workerGroupSpecs"]]
    for pod in pods:
        (c,) = pod["spec"]["containers"]
        assert "$PAH_PIP_SPEC" in c["args"][0] and "$KUBERAY_GEN_RAY_START_CMD" in c["args"][0]
        assert any(e["name"] == "PAH_PIP_SPEC" and "pah[sweep]" in e["value"] for e in c["env"])
        assert pod["spec"]["serviceAccountName"] == kinds["ServiceAccount"]["metadata"]["name"]  # the bucket's credentials
    # Ray's own translation of a RayCluster into an autoscaling config, then its schema check
    cr = copy.deepcopy(cr)
    cr["metadata"]["namespace"] = "default"
    config = _derive_autoscaling_config_from_ray_cr(cr)
    validate_config(prepare_config(config))
    assert config["available_node_types"]["gpu"]["resources"]["GPU"] == 1
    assert config["available_node_types"]["headgroup"]["resources"]["CPU"] == 0


# --------------------------------------------------------------------------- sizing a SLURM job from sinfo

# `sinfo -h -N -o SINFO_FORMAT` as a small CPU-only site and a GPU site print it
TWO_CPU_NODE = "debug*|node1|2|7900|(null)|(null)|idle|infinite|1-infinite\n"
GPU_SITE = """\
cpu*|c1|32|128000|(null)|(null)|idle|1-00:00:00|1-infinite
cpu*|c2|32|128000|(null)|(null)|mixed|1-00:00:00|1-infinite
gpu|g1|64|512000|gpu:a100:4(S:0-1)|a100,ib|mixed|2-00:00:00|1-8
gpu|g2|64|512000|gpu:a100:4(S:0-1)|a100,ib|idle|2-00:00:00|1-8
gpu|g3|48|256000|gpu:v100:2,gpu:t4:1|v100|drained|2-00:00:00|1-8
"""


def _part(text: str, name: str | None = None):
    from launch.sizing import parse_sinfo, pick_partition

    return pick_partition(parse_sinfo(text), name)


def test_sinfo_output_is_parsed():
    from launch.sizing import _gpus, _time_min, parse_sinfo

    parts = parse_sinfo(GPU_SITE)
    assert set(parts) == {"cpu", "gpu"} and parts["cpu"].default and not parts["gpu"].default
    gpu = parts["gpu"]
    assert [(n.name, n.cpus, n.gpus) for n in gpu.nodes] == [("g1", 64, 4), ("g2", 64, 4), ("g3", 48, 3)]
    assert gpu.max_time_min == 2880 and gpu.max_nodes == 8 and gpu.nodes[0].features == {"a100", "ib"}
    assert parts["cpu"].max_time_min == 1440 and parts["cpu"].max_nodes is None
    assert parse_sinfo(TWO_CPU_NODE)["debug"].max_time_min is None
    assert [_time_min(t) for t in ("infinite", "30", "30:00", "4:00:00", "2-12", "1-00:00:00", "0:30:01")] == \
        [None, 30, 30, 240, 3600, 1440, 31]
    assert [_gpus(g) for g in ("(null)", "gpu:2", "gpu:a100:4(S:0-1)", "mps:100,gpu:1", "gpu")] == [0, 2, 4, 1, 1]


def test_the_issues_two_cpu_node_gets_a_job_it_can_run():
    """Seen: the quickstart asked a 2-CPU node for 4 CPUs (the old default) and pended for ever."""
    from launch.sizing import size_request

    part = _part(TWO_CPU_NODE, "debug")
    quickstart = {"trial_cpus": 1.0, "max_concurrent": 2}
    r = size_request(part, nodes=1, **quickstart)
    assert (r.cpus_per_task, r.gpus_per_node, r.time_min) == (2, 0, 240), r
    # more concurrent trials than the node has CPUs: capped at the node, fewer run at once
    r = size_request(part, nodes=1, trial_cpus=1.0, max_concurrent=8)
    assert r.cpus_per_task == 2 and "capped at 2" in r.note
    # two Ray nodes on the one node share its CPUs
    assert size_request(part, nodes=1, tasks_per_node=2, **quickstart).cpus_per_task == 1


@pytest.mark.parametrize("kwargs, words", [
    ({"cpus_per_task": 4}, ["--cpus-per-task 4", "at most 2 CPU"]),
    ({"nodes": 2}, ["--nodes 2", "only 1 node"]),
    ({"gpus_per_node": 1}, ["--gpus-per-node 1", "0 GPU"]),
    ({"mem_gb": 64}, ["--mem-gb 64", "7.7 GB"]),
    ({"trial_cpus": 4.0}, ["spec.resources.cpus", "4 CPU", "never start a trial"]),
    ({"trial_gpus": 0.5}, ["spec.resources.gpus", "never start a trial"]),
    ({"tasks_per_node": 3}, ["--tasks-per-node 3", "2 CPU"]),
    ({"constraint": "a100"}, ["--constraint a100", "no node"]),
    ({"cpus_per_task": 1, "trial_cpus": 2.0}, ["spec.resources.cpus", "2 CPU"]),
])
def test_a_request_no_node_can_meet_is_refused_naming_the_option(kwargs, words):
    from launch.sizing import size_request
    from pah.errors import UserError

    args = {"nodes": 1, "trial_cpus": 1.0, "max_concurrent": 2, **kwargs}
    with pytest.raises(UserError) as e:
        size_request(_part(TWO_CPU_NODE, "debug"), **args)
    assert all(w in str(e.value) for w in words), str(e.value)


def test_a_gpu_spec_is_sized_per_node_and_checked_against_the_partition():
    from launch.sizing import size_request
    from pah.errors import UserError
    from sweeps.spec import load_spec

    cifar = load_spec("split-cifar100-pah")  # 8 concurrent trials x (2 CPUs, 0.25 GPU)
    spec = {"trial_cpus": cifar.resources.cpus, "trial_gpus": cifar.resources.gpus,
            "max_concurrent": cifar.max_concurrent}
    gpu = _part(GPU_SITE, "gpu")
    r = size_request(gpu, nodes=2, **spec)  # 4 trials per node
    assert (r.cpus_per_task, r.gpus_per_node, r.time_min) == (8, 1, 240), r
    r = size_request(gpu, nodes=1, **spec)  # 8 trials on one node
    assert (r.cpus_per_task, r.gpus_per_node) == (16, 2)
    r = size_request(gpu, nodes=3, **spec)  # the third-best node bounds all three
    assert (r.cpus_per_task, r.gpus_per_node) == (6, 1)
    assert size_request(gpu, nodes=2, constraint="a100", **spec).gpus_per_node == 1
    assert size_request(_part(GPU_SITE), nodes=1, trial_cpus=1.0).time_min == 240  # the default partition, cpu
    short = _part(GPU_SITE.replace("1-00:00:00", "60"))
    assert size_request(short, nodes=1, trial_cpus=1.0).time_min == 60  # the default time, lowered to the limit
    for kwargs, words in [({"time_min": 5000}, ["--time 5000", "2880"]), ({"nodes": 9}, ["--nodes 9", "at most 8"]),
                          ({"nodes": 4}, ["--nodes 4", "only 3"]), ({"gpus_per_node": 8}, ["--gpus-per-node 8", "4 GPU"]),
                          ({"gpus_per_node": 0}, ["--gpus-per-node 0", "spec.resources.gpus"]),
                          ({"constraint": "h100"}, ["--constraint h100", "a100, ib, v100"])]:
        with pytest.raises(UserError) as e:
            size_request(gpu, **{"nodes": 1, **spec, **kwargs})
        assert all(w in str(e.value) for w in words), str(e.value)
    with pytest.raises(UserError, match="invalid partition.*cpu, gpu"):
        _part(GPU_SITE, "nope")
    with pytest.raises(UserError, match="no default partition"):
        _part(GPU_SITE.replace("cpu*", "cpu"))


def test_pending_reasons_in_words():
    from launch.sizing import pending_reason

    assert pending_reason("PartitionConfig").startswith("PartitionConfig: it will never start")
    assert "shorter --time" in pending_reason("PartitionTimeLimit")
    assert pending_reason("Priority") == "Priority: waiting behind jobs of higher priority"
    assert "down, drained or reserved" in pending_reason("ReqNodeNotAvail, UnavailableNodes:n1")
    assert "QOS limit" in pending_reason("QOSMaxCpuPerUserLimit")
    assert pending_reason("None") == "" and pending_reason("SomethingNew") == "SomethingNew"


class _Server:
    """A local TCP server on 127.0.0.1: ``answer`` is the raw HTTP reply, or None to accept and never answer."""

    def __init__(self, answer: bytes | None, answers: int | None = None):
        import socket
        import threading

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.address = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.answer, self.held, self.left = answer, [], answers  # answers: close after that many
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if self.answer is None:
                self.held.append(conn)  # open, silent
                continue
            conn.recv(65536)
            conn.sendall(self.answer)
            conn.close()
            if self.left is not None:
                self.left -= 1
                if self.left <= 0:
                    self.sock.close()  # gone: connections refused from now on
                    return

    def close(self):
        self.sock.close()
        for c in self.held:
            c.close()


def _http(status: str, body: bytes) -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n\r\n").encode() + body


@pytest.mark.parametrize("answer, words", [
    (None, ["cannot reach a Ray cluster", "no answer within 2 s"]),  # accepts, never answers: Ray's client hangs
    (_http("404 Not Found", b"nope"), ["is not a Ray dashboard", "HTTP 404"]),
    (_http("200 OK", b'{"hello": "world"}'), ["is not a Ray dashboard", "no Ray version"]),
    (_http("200 OK", b"<html>a web page</html>"), ["is not a Ray dashboard"]),
])
def test_an_address_that_is_not_a_ray_dashboard_fails_fast_in_one_line(answer, words, tmp_path, monkeypatch, capsys):
    """`pah launch ray --address` pointing at something else: exit 2, one error line naming the address and
    what it answered, within seconds; nothing is written."""
    import time

    import launch.rayjob
    from pah.cli import main

    monkeypatch.setattr(launch.rayjob, "CONNECT_TIMEOUT_S", 2)
    monkeypatch.chdir(tmp_path)
    server = _Server(answer)
    try:
        t0 = time.monotonic()
        code = main(["launch", "ray", "quickstart", "--address", server.address, "--storage", "~/x"])
        took = time.monotonic() - t0
    finally:
        server.close()
    err = capsys.readouterr().err
    assert code == 2, err
    (line,) = err.strip().splitlines()
    assert line.startswith("error:") and server.address in line and all(w in line for w in words), line
    assert took < 30, took
    assert not list(tmp_path.iterdir())


def test_following_a_job_whose_cluster_goes_silent_ends_lost_not_hanging():
    """The head of a followed Ray Job lost (its dashboard gone after the submission): `follow` waits out
    ``lost_after`` seconds of silence, then says LOST (the CLI's one-line error names the resume command;
    tests/test_cloud_nodes.py loses a real head)."""
    import time

    pytest.importorskip("ray.dashboard")
    import ray

    from launch import rayjob

    # the dashboard answers the three requests that building the client makes (version checks), then is gone
    server = _Server(_http("200 OK", json.dumps({"ray_version": ray.__version__}).encode()), answers=3)
    t0 = time.monotonic()
    try:
        assert rayjob.follow(server.address, "raysubmit_gone", lost_after=2) == "LOST"
    finally:
        server.close()
    assert 2 <= time.monotonic() - t0 < 30
