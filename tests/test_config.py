from pathlib import Path

import pytest

from kdkit.config import apply_overrides, dump_yaml, load_config, parse_config
from kdkit.errors import ConfigError
from kdkit.methods import create_method, method_name

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").rglob("*.yaml")
                                         if p.parent.name not in ("pipelines", "specialists")))
def test_every_recipe_validates(path):
    cfg = load_config(ROOT / path)
    assert cfg.model.name and cfg.method
    # the resolved config round-trips
    assert parse_config(__import__("yaml").safe_load(dump_yaml(cfg))) == cfg


def test_unknown_key_names_closest():
    with pytest.raises(ConfigError, match=r"unknown key 'train.epoch'.*did you mean 'epochs'"):
        parse_config({"model": "resnet8", "train": {"epoch": 3}})
    with pytest.raises(ConfigError, match=r"unknown key 'method.temprature'.*'temperature'"):
        parse_config({"model": "resnet8", "method": {"name": "kd", "temprature": 4}})


def test_method_config_typo_fails_in_python_too():
    with pytest.raises(ConfigError, match="temprature"):
        create_method("kd", temprature=4)


def test_wrong_types_and_values():
    with pytest.raises(ConfigError, match="train.epochs: expected an integer"):
        parse_config({"model": "resnet8", "train": {"epochs": "ten"}})
    with pytest.raises(ConfigError, match="optim.name: 'adam' is not one of"):
        parse_config({"model": "resnet8", "optim": {"name": "adam"}})
    with pytest.raises(ConfigError, match="alpha must be in"):
        parse_config({"model": "resnet8", "method": {"name": "kd", "alpha": 2}})
    with pytest.raises(ConfigError, match="missing required key"):
        parse_config({"data": {"name": "digits"}})


def test_unknown_method_suggests():
    with pytest.raises(ConfigError, match="unknown method 'fitnet'; did you mean 'fitnets'"):
        parse_config({"model": "resnet8", "method": "fitnet"})


def test_overrides():
    data = {"model": "resnet8", "method": {"name": "kd"}}
    cfg = parse_config(apply_overrides(data, ["method.temperature=2", "train.epochs=3", "optim.lr=0.1"]))
    assert cfg.method[0].temperature == 2.0 and cfg.train.epochs == 3 and cfg.optim.lr == 0.1
    data = {"model": "resnet8", "method": [{"name": "kd"}, {"name": "at"}]}
    cfg = parse_config(apply_overrides(data, ["method.at.beta=10", "method.0.alpha=0.5"]))
    assert cfg.method[1].beta == 10.0 and cfg.method[0].alpha == 0.5
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["train.epochs"])


def test_defaults_and_shorthands():
    cfg = parse_config({"model": "resnet8", "teacher": "resnet32x4"})
    assert method_name(cfg.method[0]) == "vanilla"
    assert cfg.teacher[0].name == "resnet32x4"


def test_generated_recipes_are_up_to_date():
    import subprocess
    import sys

    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_recipes.py"), "--check"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def test_every_method_has_recipes():
    from kdkit import list_methods
    from kdkit.methods import METHODS

    for m in list_methods(task="segmentation"):
        if m != "vanilla":
            assert (ROOT / "configs" / "fashion_canvas" / f"{m}.yaml").is_file()
    for m in list_methods(task="text_classification"):
        if m != "vanilla":
            assert (ROOT / "configs" / "austen" / f"{m}.yaml").is_file()
    for m in list_methods(task="classification"):
        if m == "cross_modal":  # two inputs per sample: the paired dataset's recipes
            assert (ROOT / "configs" / "fashion_mnist_edges" / f"{m}.yaml").is_file()
            continue
        if METHODS.get(m).family == "online":  # cohorts without a teacher: the online papers' setting
            for model in ("resnet32", "resnet110"):
                assert (ROOT / "configs" / "cifar100" / "online" / f"{m}-{model}.yaml").is_file()
        else:  # netaug refuses ShuffleNet's channel shuffle (tests/test_netaug.py)
            pair = "resnet56-resnet20" if m == "netaug" else "resnet32x4-shufflenetv2"
            assert (ROOT / "configs" / "cifar100" / pair / f"{m}.yaml").is_file()
        if m != "vanilla":
            assert (ROOT / "configs" / "fashion_mnist" / f"{m}.yaml").is_file()


def test_methods_doc_lists_every_method():
    from kdkit import list_methods

    text = (ROOT / "docs" / "methods.md").read_text()
    missing = [m for m in list_methods() if f"| `{m}` |" not in text]
    assert not missing, f"docs/methods.md lacks {missing}"


@pytest.mark.parametrize("path", sorted(str(p.relative_to(ROOT))
                                         for p in (ROOT / "configs" / "specialists").glob("*.yaml")))
def test_every_specialists_file_validates(path):
    from kdkit.specialists import load_specialists_config

    cfg = load_specialists_config(ROOT / path)
    assert cfg.generalist and cfg.clusters >= 2
    parse_config(apply_overrides({"model": "cnn_tiny"}, list(cfg.set)))  # its overrides name real fields


@pytest.mark.parametrize("path", sorted(str(p.relative_to(ROOT))
                                         for p in (ROOT / "configs" / "pipelines").glob("*.yaml")))
def test_every_pipeline_validates_with_its_recipes(path, monkeypatch):
    from kdkit.pipeline import load_pipeline

    monkeypatch.chdir(ROOT)  # recipe paths are relative to the repository root
    pipe = load_pipeline(ROOT / path)
    for run in pipe.runs:
        if run.config is None:  # a quantize or export step: nothing to validate beyond load_pipeline's checks
            continue
        if isinstance(run.config, dict):
            load_config(base=run.config, overrides=run.set)
        else:
            load_config(run.config, run.set)
