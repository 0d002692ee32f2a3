import dataclasses

import pytest

from pah.config import config_id, load_config, parse_overrides, preset_names
from pah.errors import UserError

DATASETS = ["split-digits", "split-fashion-mnist", "split-mnist", "split-cifar100", "tiny-imagenet", "synthetic"]
METHODS = ["pah", "hnet", "lwf", "ewc", "si", "er", "agem", "derpp", "finetune", "joint"]


def test_a_preset_for_every_dataset_method_pair():
    assert sorted(preset_names()) == sorted(f"{d}-{m}" for d in DATASETS for m in METHODS)
    for name in preset_names():
        cfg = load_config(name)
        assert name == f"{cfg.data.name}-{cfg.method.name}"


def test_cifar_pah_preset_carries_reference_defaults():
    cfg = load_config("split-cifar100-pah")
    assert (cfg.train.epochs_per_task, cfg.train.batch_size, cfg.train.lr, cfg.train.head_lr) == (15, 64, 1e-4, 1e-3)
    assert (cfg.method.prototype_size, cfg.method.hyper_hidden, cfg.method.temperature, cfg.method.lambda_kd) == (10, 16, 2.0, 0.5)
    assert cfg.model.backbone == "mobilenetv2"


def test_overrides_are_typed_and_validated():
    cfg = load_config("split-digits-pah", ["train.epochs_per_task=3", "train.lr=1e-4", "seed=7", "method.temperature=4"])
    assert cfg.train.epochs_per_task == 3 and cfg.train.lr == 1e-4 and cfg.seed == 7
    assert cfg.method.temperature == 4.0 and isinstance(cfg.method.temperature, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epochs=3", "unknown key train.epochs in train; valid keys: epochs_per_task"),
        ("train.batch_size=abc", "train.batch_size: expected int, got 'abc'"),
        ("train.batch_size=3.5", "train.batch_size: expected int"),
        ("train.batch_size=0", "train.batch_size: 0 is out of range"),
        ("method.name=nope", "unknown method 'nope'; valid: agem, derpp, er, ewc, finetune, hnet, joint, lwf, pah, si"),
        ("data.name=cifar", "unknown dataset 'cifar'; valid:"),
        ("model.backbone=vgg", "unknown backbone 'vgg'"),
        ("method.prototype_init=zeros", "method.prototype_init: 'zeros' is not one of 'image', 'random'"),
        ("method.lambda_kd=1", None),
        ("bogus=1", "unknown key bogus in config"),
        ("train", "--set 'train': expected KEY=VALUE"),
    ],
)
def test_bad_values_name_the_field(override, message):
    if message is None:
        load_config("split-digits-pah", [override])
        return
    with pytest.raises(UserError) as e:
        load_config("split-digits-pah", [override])
    assert message in str(e.value)


def test_switching_method_drops_the_old_methods_keys():
    cfg = load_config("split-digits-pah", ["method.name=lwf", "method.lambda_kd=2"])
    assert cfg.method.name == "lwf" and cfg.method.lambda_kd == 2.0


def test_method_keys_belong_to_their_method():
    with pytest.raises(UserError, match="unknown key method.prototype_size in method; valid keys: name, lambda_kd"):
        load_config("split-digits-lwf", ["method.prototype_size=5"])


def test_yaml_file_with_preset_base(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("preset: split-digits-hnet\ntrain: {epochs_per_task: 2}\n")
    cfg = load_config(p)
    assert cfg.method.name == "hnet" and cfg.train.epochs_per_task == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(UserError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(UserError, match="neither a YAML file nor a preset"):
        load_config("no-such-preset")


def test_config_id_ignores_seed_but_not_hyperparameters():
    a = load_config("split-digits-pah", ["seed=0"])
    b = load_config("split-digits-pah", ["seed=1"])
    c = load_config("split-digits-pah", ["method.temperature=3"])
    assert config_id(a) == config_id(b) != config_id(c)


def test_cuda_graph_is_the_default_and_not_part_of_config_id():
    """How a step runs on CUDA is not what a config learns: seeds run with and without the graph
    average together, and ids of runs made before the default changed (graph off) still match."""
    on = load_config("split-digits-pah")
    off = load_config("split-digits-pah", ["train.cuda_graph=false"])
    assert on.train.cuda_graph and not off.train.cuda_graph
    assert config_id(on) == config_id(off) == "549091ae492f"  # the id of this preset before 2026-12-04


def test_parse_overrides_nests():
    assert parse_overrides(["a.b=1", "a.c=x", "d=true"]) == {"a": {"b": 1, "c": "x"}, "d": True}
