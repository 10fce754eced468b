"""Configs check themselves when made (`__post_init__`), naming the key `from_dict` built them under."""

from __future__ import annotations

import dataclasses

import pytest

from orchestrator.spec.inputs import ComputeConfig, SyntheticSpec
from workloads.config import (
    ConfigError,
    DataConfig,
    FinetuneConfig,
    ModelConfig,
    PretrainConfig,
    RuntimeConfig,
    from_dict,
    types_only,
)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: ModelConfig(width=0), "model.width = 0"),
        (lambda: DataConfig(loader_workers=-1), "data.loader_workers = -1"),
        (lambda: RuntimeConfig(amp="fp16"), "runtime.amp = 'fp16'"),
        (lambda: PretrainConfig(n=100), "pretrain.n = 100"),
        (lambda: FinetuneConfig(label_fraction=0.0), "finetune.label_fraction = 0.0"),
        (lambda: ComputeConfig(workers_per_stage=0), "compute.workers_per_stage = 0"),
        (lambda: SyntheticSpec(train=0), "synthetic.train = 0"),
    ],
)
def test_a_config_made_in_code_checks_itself(make, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        make()


def test_replace_checks_the_new_value():
    with pytest.raises(ConfigError, match="pretrain.lr = 5"):
        dataclasses.replace(PretrainConfig(), lr=5.0)


def test_from_dict_names_the_full_key_of_a_nested_value():
    with pytest.raises(ConfigError) as info:
        from_dict(PretrainConfig, {"model": {"width": 0}}, "s.yaml: t000: pretrain")
    assert str(info.value).startswith("s.yaml: t000: pretrain.model.width = 0")
    with pytest.raises(ConfigError) as info:
        from_dict(FinetuneConfig, {"freeze": 7}, "s.yaml: t001: finetune")
    assert str(info.value).startswith("s.yaml: t001: finetune.freeze = 7")


def test_cross_field_rules_wait_for_the_whole_config_under_types_only():
    with types_only():  # a study's single override: method imagenet before its checkpoint is known
        part = from_dict(PretrainConfig, {"method": "imagenet"}, "s.yaml: matrix")
        with pytest.raises(
            ConfigError, match="s.yaml: matrix.n = .six.: expected an integer"
        ):  # types still checked
            from_dict(PretrainConfig, {"n": "six"}, "s.yaml: matrix")
    assert part.method == "imagenet"
    with pytest.raises(ConfigError, match="s.yaml: t: pretrain.checkpoint: method 'imagenet' needs"):
        from_dict(PretrainConfig, {"method": "imagenet"}, "s.yaml: t: pretrain")


def test_the_finetune_recipe_is_filled_before_the_check():
    cfg = FinetuneConfig(model=ModelConfig(backbone="simplebaseline_r50"))
    assert (cfg.epochs, cfg.aug.rotate_deg) == (140, 40.0)
