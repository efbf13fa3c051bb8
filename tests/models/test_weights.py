"""Weight files: layout errors that name the problem, downloads into the cache (atomic, checked),
the offline/gated explanations, and whole-network files (other class counts, delta weights)."""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from panoptic_train.errors import WeightsError
from panoptic_train.models import hub, registry, weights
from panoptic_train.models.backbones import WeightSource
from panoptic_train.models.dinov3 import DinoV3ViT
from panoptic_train.models.eomt import EoMT, EoMTConfig

from .conftest import TINY_ARCHS, register_backbone


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "cache"
    monkeypatch.setenv(hub.CACHE_ENV, str(directory))
    return directory


def tiny_eomt(num_classes: int = 3) -> EoMT:
    return EoMT(EoMTConfig("test-mlp", num_classes=num_classes, num_queries=4, num_joint_blocks=2))


def test_missing_and_unexpected_keys_are_named(tmp_path: Path, tiny_archs) -> None:
    state = DinoV3ViT(TINY_ARCHS["test-mlp"]).state_dict()
    del state["blocks.2.ls1.gamma"]
    state["blocks.0.attn.extra.weight"] = torch.zeros(1)
    path = tmp_path / "backbone.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError) as error:
        weights.load_weights(tiny_eomt(), path)
    message = str(error.value)
    assert "missing keys [blocks.2.ls1.gamma]" in message
    assert "unexpected keys [blocks.0.attn.extra.weight]" in message
    assert str(path) in message and "meta layout" in message


def test_a_file_for_another_size_is_a_shape_error(tmp_path: Path, tiny_archs) -> None:
    path = tmp_path / "glu.pth"
    torch.save(DinoV3ViT(TINY_ARCHS["test-glu"]).state_dict(), path)
    with pytest.raises(WeightsError, match=r"missing keys \[blocks\.0\.mlp\.fc1\.bias"):
        weights.load_weights(tiny_eomt(), path)
    wide = {k: v for k, v in DinoV3ViT(TINY_ARCHS["test-mlp"]).state_dict().items()}
    wide["norm.weight"] = torch.ones(96)
    torch.save(wide, path)
    with pytest.raises(WeightsError, match=r"norm\.weight: file \(96,\) vs model \(64,\)"):
        weights.load_weights(tiny_eomt(), path)


def test_unrecognised_files_are_rejected(tmp_path: Path, tiny_archs) -> None:
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, path)
    with pytest.raises(WeightsError, match=r"Unrecognised weights layout \(first keys: conv1"):
        weights.load_weights(tiny_eomt(), path)
    with pytest.raises(WeightsError, match="does not exist"):
        weights.load_weights(tiny_eomt(), tmp_path / "nothing.pth")


def test_default_weights_without_a_public_file_explain_what_to_do(cache: Path) -> None:
    with pytest.raises(WeightsError) as error:
        registry.create_model("dinov3/vitt16-eomt", num_classes=3)
    message = str(error.value)
    assert "not published" in message
    assert "backbone_weights=None" in message and "backbone_weights=<path or URL>" in message
    assert str(cache / "dinov3_vitt16.pth") in message and hub.CACHE_ENV in message


@pytest.mark.parametrize(
    ("name", "repo"),
    [
        ("dinov3/vits16-eomt-panoptic-coco", "coco_panoptic_eomt_small_640_dinov3"),
        ("dinov3/vitb16-eomt-panoptic-coco", "coco_panoptic_eomt_base_640_dinov3"),
        ("dinov3/vitl16-eomt-panoptic-coco", "coco_panoptic_eomt_large_640_dinov3"),
        ("dinov3/vitl16-eomt-panoptic-coco-1280", "coco_panoptic_eomt_large_1280_dinov3"),
    ],
)
def test_coco_models_download_the_eomt_authors_checkpoints(name: str, repo: str) -> None:
    # Loading files in that layout: tests/models/test_eomt.py (against transformers' EoMT).
    source = registry.get_model_info(name).weights
    assert source.url == f"https://huggingface.co/tue-mps/{repo}/resolve/main/pytorch_model.bin"
    assert source.layout == "eomt-authors" and source.is_delta


def test_coco_models_without_published_weights_say_which_are(tiny_archs) -> None:
    info = registry.get_model_info("dinov3/vitt16-eomt-panoptic-coco")
    with pytest.raises(WeightsError) as error:
        weights.load_source(tiny_eomt(), info.weights)
    message = str(error.value)
    assert "not published" in message and "'dinov3/vits16-eomt-panoptic-coco'" in message
    assert "weights= in load_model" in message and "'dinov3/vitt16-eomt'" in message


def test_cached_default_file_is_used_without_network(cache: Path, tiny_archs, perturb) -> None:
    source = WeightSource(filename="test-mlp.pth", layout="meta", url="http://127.0.0.1:9/never")
    pretrained = DinoV3ViT(TINY_ARCHS["test-mlp"])
    perturb(pretrained)
    cache.mkdir()
    torch.save(pretrained.state_dict(), cache / "test-mlp.pth")
    model = tiny_eomt()
    assert weights.load_source(model, source) == "meta"
    for key, value in pretrained.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[key], value), key


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A local HTTP server (no network) serving tmp_path/served."""
    root = tmp_path / "served"
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()
    server.server_close()


def test_url_download_checks_the_hash_in_the_file_name(
    file_server, cache: Path, tiny_archs, perturb
) -> None:
    base_url, root = file_server
    pretrained = DinoV3ViT(TINY_ARCHS["test-mlp"])
    perturb(pretrained)
    staging = root / "staging.pth"
    torch.save(pretrained.state_dict(), staging)
    sha = hashlib.sha256(staging.read_bytes()).hexdigest()
    good, bad = f"dinov3_test-{sha[:8]}.pth", "dinov3_test-00000000.pth"
    staging.rename(root / good)
    (root / bad).write_bytes((root / good).read_bytes())

    with pytest.raises(WeightsError, match="does not match the 00000000"):
        weights.load_weights(tiny_eomt(), f"{base_url}/{bad}")
    assert list(cache.glob(f"*{bad}")) == [] and list(cache.glob("*.partial")) == []

    model = tiny_eomt()
    assert weights.load_weights(model, f"{base_url}/{good}") == "meta"
    assert len(list(cache.glob(f"*--{good}"))) == 1
    assert torch.equal(model.backbone.norm.weight, pretrained.norm.weight)


def test_unreachable_download_names_the_file_and_the_way_around(cache: Path, tiny_archs) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/dinov3_vits16_pretrain_lvd1689m-08c60483.pth"
    with pytest.raises(WeightsError) as error:
        weights.load_weights(tiny_eomt(), url)
    message = str(error.value)
    assert url in message and "download failed" in message
    assert str(cache) in message and "dinov3_vits16_pretrain_lvd1689m-08c60483.pth" in message
    assert hub.CACHE_ENV in message


def test_whole_network_file_with_other_classes_keeps_a_fresh_class_head(
    tmp_path: Path, tiny_archs, perturb
) -> None:
    source = tiny_eomt(num_classes=7)
    perturb(source)
    path = tmp_path / "exported_state.pt"
    torch.save(source.state_dict(), path)
    model = tiny_eomt(num_classes=3)
    fresh_head = model.class_head.weight.clone()
    assert weights.load_weights(model, path) == "eomt"
    assert torch.equal(model.class_head.weight, fresh_head)
    assert torch.equal(model.mask_head.fc2.weight, source.mask_head.fc2.weight)
    assert torch.equal(
        model.backbone.blocks[3].mlp.fc1.weight, source.backbone.blocks[3].mlp.fc1.weight
    )


def cached_base(cache: Path, perturb, monkeypatch: pytest.MonkeyPatch) -> DinoV3ViT:
    """A pretrained test-mlp backbone in the cache, declared as its size's default file."""
    base = DinoV3ViT(TINY_ARCHS["test-mlp"])
    perturb(base, seed=1)
    cache.mkdir()
    torch.save(base.state_dict(), cache / "base.pth")
    source = WeightSource(filename="base.pth", layout="meta", is_delta=False)
    register_backbone(monkeypatch, "test-mlp", TINY_ARCHS["test-mlp"], source)
    return base


def fine_tuned(base: DinoV3ViT, perturb) -> EoMT:
    network = tiny_eomt()
    network.backbone.load_state_dict(base.state_dict())
    perturb(network, seed=2, scale=0.01)
    return network


def differences(network: EoMT, base: DinoV3ViT) -> dict[str, torch.Tensor]:
    """The EoMT authors' way of storing a fine-tuned backbone: minus the DINOv3 weights."""
    delta = network.state_dict()
    for key, value in base.state_dict().items():
        if not key.endswith(("bias_mask", "periods")):
            delta["backbone." + key] = delta["backbone." + key] - value
    return delta


def test_delta_weights_are_added_to_the_default_backbone(
    tmp_path: Path, cache: Path, tiny_archs, perturb, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A file the user names declares nothing: its final-norm scale near 0 tells.
    base = cached_base(cache, perturb, monkeypatch)
    finetuned = fine_tuned(base, perturb)
    path = tmp_path / "delta.pt"
    torch.save(differences(finetuned, base), path)
    model = tiny_eomt()
    weights.load_weights(model, path)
    for key, value in finetuned.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=1e-6)


def test_a_source_declared_as_delta_is_added_whatever_its_values(
    cache: Path, tiny_archs, perturb, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = cached_base(cache, perturb, monkeypatch)
    finetuned = fine_tuned(base, perturb)
    with torch.no_grad():
        finetuned.backbone.norm.weight.add_(1.0)  # a difference near 1: no longer looks like one
    delta = differences(finetuned, base)
    torch.save(delta, cache / "delta.pt")
    model = tiny_eomt()
    declared = WeightSource(filename="delta.pt", layout="eomt", is_delta=True)
    assert weights.load_source(model, declared) == "eomt"
    for key, value in finetuned.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=1e-6)
    # The same file without the declaration is taken as whole weights.
    undeclared = tiny_eomt()
    weights.load_weights(undeclared, cache / "delta.pt")
    assert torch.equal(undeclared.backbone.norm.weight, delta["backbone.norm.weight"])


def test_a_source_declared_whole_loads_as_is_even_if_it_looks_like_a_delta(
    cache: Path, tiny_archs, perturb
) -> None:
    network = tiny_eomt()
    perturb(network)
    with torch.no_grad():
        network.backbone.norm.weight.mul_(0.1)  # what a difference file would look like
    cache.mkdir()
    torch.save(network.state_dict(), cache / "whole.pt")
    model = tiny_eomt()
    # Nothing is added: the size's pretrained file (test-mlp.pth) is not even in the cache.
    weights.load_source(model, WeightSource(filename="whole.pt", layout="eomt", is_delta=False))
    for key, value in network.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_a_cached_file_in_another_layout_than_declared_is_refused(cache: Path, tiny_archs) -> None:
    cache.mkdir()
    torch.save(DinoV3ViT(TINY_ARCHS["test-mlp"]).state_dict(), cache / "published.pth")
    source = WeightSource(filename="published.pth", layout="hf", url="http://127.0.0.1:9/never")
    with pytest.raises(WeightsError) as error:
        weights.load_source(tiny_eomt(), source)
    message = str(error.value)
    assert f"{cache / 'published.pth'} is in the meta layout" in message
    assert "published.pth is in the hf layout" in message and "backbone_weights=<path>" in message


def test_a_default_file_in_its_published_layout_loads_from_the_cache(cache: Path, perturb) -> None:
    # timm's public copy (safetensors, timm keys) at the declared cache name, read offline.
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    peer = timm.create_model("vit_small_patch16_dinov3", num_classes=0).eval()
    perturb(peer)
    source = registry.get_model_info("dinov3/vits16-eomt").weights
    cache.mkdir()
    save_file(peer.state_dict(), cache / source.filename)
    model = registry.create_model("dinov3/vits16-eomt", num_classes=3).eval()
    x = torch.randn(1, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model.backbone(x), peer.forward_features(x), rtol=0, atol=1e-4)
