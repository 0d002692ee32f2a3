"""The README's examples are real: its YAML blocks validate, its commands exist."""

import re
from pathlib import Path

import yaml

from pah.config import load_config

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _yaml_block(marker: str) -> str:
    m = re.search(re.escape(marker) + r"\n(.*?)```", README, re.S)
    assert m, marker
    return m.group(1)


def test_readme_config_example_validates(tmp_path):
    p = tmp_path / "my.yaml"
    p.write_text(_yaml_block("# my.yaml: start from a preset, change what you need"))
    cfg = load_config(p)
    assert (cfg.data.name, cfg.method.name, cfg.model.backbone, cfg.seed) == ("split-fashion-mnist", "pah", "reduced-resnet18", 1)


def test_readme_sweep_example_validates(tmp_path):
    from sweeps.spec import load_spec

    p = tmp_path / "my-sweep.yaml"
    p.write_text(_yaml_block("# my-sweep.yaml"))
    assert yaml.safe_load(p.read_text())["searcher"] == "optuna-tpe"
    spec = load_spec(str(p))
    assert spec.num_samples == 40 and spec.confirm.top_k == 3


def test_readme_shows_setup_main_job_and_tests():
    for cmd in ("./setup.sh", ".venv/bin/pah train split-digits-pah", ".venv/bin/python -m pytest"):
        assert cmd in README
