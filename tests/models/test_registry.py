"""Model names: every listed name resolves to one record (architecture, size, classes,
default weights) that builds, and bad names are answered with the closest valid ones."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

import panoptic_train
from panoptic_train.errors import ConfigError
from panoptic_train.models import _cli, hub, registry

SPEC_NAMES = [
    "dinov3/vits16-eomt-panoptic-coco",
    "dinov3/vitb16-eomt-panoptic-coco",
    "dinov3/vitl16-eomt-panoptic-coco",
    "dinov3/vitl16-eomt-panoptic-coco-1280",
    "dinov3/vitt16-eomt-panoptic-coco",
    "dinov3/vitt16plus-eomt-panoptic-coco",
    "dinov3/vitt16-eomt",
    "dinov3/vitt16plus-eomt",
    "dinov3/vits16-eomt",
    "dinov3/vits16plus-eomt",
    "dinov3/vitb16-eomt",
    "dinov3/vitl16-eomt",
    "dinov3/vitl16plus-eomt",
    "dinov3/vith16plus-eomt",
    "dinov3/vit7b16-eomt",
]


def test_every_spec_name_is_listed_through_the_public_api() -> None:
    assert sorted(panoptic_train.list_models()) == sorted(SPEC_NAMES)


@pytest.mark.parametrize(
    ("name", "backbone", "size", "joint_blocks"),
    [
        ("dinov3/vitt16-eomt", "vitt16", (640, 640), 3),
        ("dinov3/vitb16-eomt-panoptic-coco", "vitb16", (640, 640), 3),
        ("dinov3/vitl16-eomt-panoptic-coco-1280", "vitl16", (1280, 1280), 4),
        ("dinov3/vith16plus-eomt", "vith16plus", (640, 640), 5),
        ("dinov3/vit7b16-eomt", "vit7b16", (640, 640), 5),
    ],
)
def test_names_resolve_to_the_paper_architectures(
    name: str, backbone: str, size: tuple[int, int], joint_blocks: int
) -> None:
    config = registry.model_config(name, num_classes=10)
    assert (config.backbone, config.image_size, config.num_joint_blocks) == (
        backbone,
        size,
        joint_blocks,
    )
    assert config.num_queries == 200


def test_benchmark_table_spelling_is_an_alias() -> None:
    alias = registry.get_model_info("dinov3/vittplus16-eomt-panoptic-coco")
    assert alias == registry.get_model_info("dinov3/vitt16plus-eomt-panoptic-coco")
    assert "dinov3/vittplus16-eomt-panoptic-coco" not in registry.list_models()


def test_coco_models_carry_the_133_coco_panoptic_classes() -> None:
    classes = registry.model_classes("dinov3/vits16-eomt-panoptic-coco")
    assert classes is not None and len(classes) == 133
    assert sum(c["isthing"] for c in classes) == 80
    assert classes[0] == {"id": 1, "name": "person", "isthing": True}
    assert classes[80] == {"id": 92, "name": "banner", "isthing": False}
    assert classes[-1] == {"id": 200, "name": "rug-merged", "isthing": False}
    assert registry.model_classes("dinov3/vits16-eomt") is None


def test_create_model_with_random_weights_and_overrides(tiny_archs) -> None:
    model = panoptic_train.create_model(
        "dinov3/vitt16-eomt",
        num_classes=4,
        backbone_weights=None,
        num_queries=11,
        num_joint_blocks=2,
        image_size=(320, 480),
    )
    assert model.config.to_dict() == {
        "backbone": "vitt16",
        "num_classes": 4,
        "num_queries": 11,
        "num_joint_blocks": 2,
        "image_size": [320, 480],
    }
    rebuilt = registry.build_eomt(model.config)
    rebuilt.load_state_dict(model.state_dict())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(x).mask_logits[0], model.eval()(x).mask_logits[0])


def test_unknown_names_and_model_args_are_explained() -> None:
    with pytest.raises(ConfigError, match=r"Unknown model 'dinov3/vitx16-eomt'.*dinov3/vits16"):
        registry.create_model("dinov3/vitx16-eomt", num_classes=3, backbone_weights=None)
    with pytest.raises(ConfigError, match=r"Unknown model_args \['num_query'\]"):
        registry.create_model(
            "dinov3/vitt16-eomt", num_classes=3, backbone_weights=None, num_query=5
        )


@pytest.mark.parametrize("name", registry.list_models())
def test_every_registered_name_builds_the_architecture_of_its_record(name: str) -> None:
    info = registry.get_model_info(name)
    num_classes = len(info.classes) if info.classes else 5
    with torch.device("meta"):  # no memory for the weights, even for ViT-7B
        model = registry.create_model(name, num_classes=num_classes, backbone_weights=None)
    arch = info.backbone.arch
    assert model.config.backbone == info.backbone.name
    assert (model.config.image_size, model.config.num_joint_blocks) == (
        info.image_size,
        info.num_joint_blocks,
    )
    assert (len(model.backbone.blocks), model.backbone.embed_dim) == (arch.depth, arch.embed_dim)
    assert model.class_head.out_features == num_classes + 1


def test_default_weights_are_the_backbone_file_or_a_whole_network() -> None:
    for name in registry.list_models():
        info = registry.get_model_info(name)
        if info.classes is None:
            assert info.weights == info.backbone.weights, name
        elif info.weights.url is None:  # a file the user passes, cached under the name
            assert info.weights.filename == name.replace("/", "--") + ".pt"
        if info.weights.url is not None:  # a published file declares what it holds
            assert info.weights.layout is not None and info.weights.is_delta is not None, name


def test_unknown_names_suggest_the_closest_valid_ones() -> None:
    with pytest.raises(ConfigError) as error:
        registry.get_model_info("dinov3/vits16-eomt-coco")
    message = str(error.value)
    assert "Did you mean 'dinov3/vits16-eomt' or 'dinov3/vits16-eomt-panoptic-coco'" in message
    assert "Valid models: dinov3/vitt16-eomt-panoptic-coco, " in message
    assert "exported model file" in message
    with pytest.raises(ConfigError, match=r"Unknown model 'vits16'\. Did you mean 'dinov3/vits16"):
        registry.create_model("vits16", num_classes=3, backbone_weights=None)


def test_list_models_prints_each_name_with_its_size_and_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(hub.CACHE_ENV, str(tmp_path))
    cached = registry.get_model_info("dinov3/vitb16-eomt").weights.filename
    (tmp_path / cached).write_bytes(b"")
    assert _cli.run(argparse.Namespace(names_only=False)) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[1:]}
    assert list(rows) == registry.list_models()
    assert rows["dinov3/vitl16-eomt-panoptic-coco-1280"][1:4] == ["vitl16", "1280x1280", "4"]
    assert rows["dinov3/vits16-eomt"][4] == (
        "https://huggingface.co/timm/vit_small_patch16_dinov3.lvd1689m/resolve/main/model.safetensors"
    )
    assert rows["dinov3/vitb16-eomt"][4:] == ["cached:", str(tmp_path / cached)]
    assert rows["dinov3/vitt16-eomt"][4:7] == ["no", "public", "file"]
