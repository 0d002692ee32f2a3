"""launch/ without a cluster: resource translation, CLI errors, cloud templates checked by Ray's validators."""

from __future__ import annotations

import copy
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
def test_bad_input_is_exit_2_with_one_error_line(args, words, tmp_path):
    storage = [] if "--storage" in args else ["--storage", str(tmp_path / "s") if args[1] == "slurm" else "~/x"]
    r = run_pah(*args, *storage, cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    assert all(w in lines[0] for w in words), lines[0]
    assert not (tmp_path / "s").exists()


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
    assert set(kinds) == {"RayCluster", "PersistentVolumeClaim"}
    cr = kinds["RayCluster"]
    assert cr["apiVersion"] == "ray.io/v1" and cr["metadata"]["annotations"]["ray.io/overwrite-container-cmd"] == "true"
    pods = [cr["spec"]["headGroupSpec"]["template"]] + [g["template"] for g in cr["spec"]["workerGroupSpecs"]]
    for pod in pods:
        (c,) = pod["spec"]["containers"]
        assert "$PAH_PIP_SPEC" in c["args"][0] and "$KUBERAY_GEN_RAY_START_CMD" in c["args"][0]
        assert any(e["name"] == "PAH_PIP_SPEC" and "pah[sweep]" in e["value"] for e in c["env"])
        assert {"name": "storage", "mountPath": "/data"} in c["volumeMounts"]
        assert pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == kinds["PersistentVolumeClaim"]["metadata"]["name"]
    # Ray's own translation of a RayCluster into an autoscaling config, then its schema check
    cr = copy.deepcopy(cr)
    cr["metadata"]["namespace"] = "default"
    config = _derive_autoscaling_config_from_ray_cr(cr)
    validate_config(prepare_config(config))
    assert config["available_node_types"]["gpu"]["resources"]["GPU"] == 1
    assert config["available_node_types"]["headgroup"]["resources"]["CPU"] == 0
