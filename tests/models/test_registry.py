"""Model names: every name of the spec resolves to an architecture, size and classes."""

from __future__ import annotations

import pytest
import torch

import panoptic_train
from panoptic_train.errors import ConfigError
from panoptic_train.models import registry

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
