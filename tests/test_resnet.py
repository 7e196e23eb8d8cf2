"""ResNet-18 / ResNet-50 backbones: feature sizes, the CIFAR / ImageNet stem (and model.stem=auto's choice from the
image size), torchvision's ResNet-50 parameter count, grey input, zero-init residuals, save / load / ONNX export, a
SimCLR step, and the parameter names older ResNet-18 checkpoints were saved under."""
import json

import pytest
import torch

from selfsup.config import load_config
from selfsup.takeaways.export import export_backbone
from selfsup.methods import build_method
from selfsup.models import (ResNet18, ResNet50, backbone_from_config, backbone_info, build_backbone, load_backbone,
                            resolve_stem, save_backbone)


def tiny(name, channels=3, width=4, **kw):
    torch.manual_seed(0)
    return build_backbone(name, channels, width=width, **kw).eval()


def model_cfg(**model):
    return load_config({"model": model}).model


@pytest.mark.parametrize("name, per_width", [("resnet18", 8), ("resnet50", 32)])
@pytest.mark.parametrize("stem, size", [("cifar", 32), ("imagenet", 72)])
def test_feature_size(name, per_width, stem, size):
    m = tiny(name, stem=stem)
    assert m.feat_dim == 4 * per_width
    assert m(torch.rand(2, 3, size, size)).shape == (2, 4 * per_width)


def test_standard_width_feature_sizes_and_torchvision_resnet50_parameter_count():
    assert ResNet18(3).feat_dim == 512
    r50 = ResNet50(3, stem="imagenet")
    assert r50.feat_dim == 2048
    # torchvision.models.resnet50(): 25,557,032 parameters, less its fc layer (2048·1000 + 1000)
    assert sum(p.numel() for p in r50.parameters()) == 25_557_032 - 2_049_000 == 23_508_032
    # the stem changes only the first conv: 7x7 instead of 3x3
    assert sum(p.numel() for p in ResNet50(3, stem="cifar").parameters()) == 23_508_032 - 64 * 3 * (49 - 9)


def test_stem_auto_picks_cifar_up_to_64_px_imagenet_above():
    assert [resolve_stem("auto", s) for s in (28, 32, 64, 65, 72, 224)] == ["cifar"] * 3 + ["imagenet"] * 3
    assert resolve_stem("auto", None) == "cifar"  # image size unknown: the stem of today's small images
    assert resolve_stem("cifar", 224) == "cifar" and resolve_stem("imagenet", 32) == "imagenet"
    for name in ("resnet18", "resnet50"):
        for size, kind, side in ((32, "cifar", 32), (72, "imagenet", 18)):  # 72 → 7x7/2 → 36 → max-pool/2 → 18
            torch.manual_seed(0)
            m = backbone_from_config(model_cfg(backbone=name, width=4), 3, size).eval()
            assert m.stem_kind == kind
            stem_out = m.stem(m.normalize(torch.rand(2, 3, size, size)))
            assert stem_out.shape == (2, 4, side, side)
            assert any(isinstance(x, torch.nn.MaxPool2d) for x in m.stem) == (kind == "imagenet")
            assert m.stem[0].kernel_size == ((3, 3) if kind == "cifar" else (7, 7))
    forced = backbone_from_config(model_cfg(backbone="resnet50", width=4, stem="cifar"), 3, 224)
    assert forced.stem_kind == "cifar"


def test_build_method_passes_the_image_size_to_the_stem():
    cfg = load_config({"model": {"backbone": "resnet18", "width": 4}})
    assert build_method(cfg, 3).backbone.stem_kind == "cifar"
    assert build_method(cfg, 3, image_size=96).backbone.stem_kind == "imagenet"


def test_grey_input():
    for name in ("resnet18", "resnet50"):
        m = tiny(name, channels=1, stem="imagenet")
        out = m(torch.rand(2, 1, 72, 72))
        assert out.shape == (2, m.feat_dim) and torch.isfinite(out).all()


def test_zero_init_residual_starts_each_block_at_its_shortcut():
    m = backbone_from_config(model_cfg(backbone="resnet50", width=4, zero_init_residual=True), 3, 32)
    assert all(b.bn3.weight.abs().sum() == 0 for b in m.layers)
    assert all(b.bn1.weight.abs().sum() > 0 for b in m.layers)
    assert all(b.bn2.weight.abs().sum() == 0 for b in tiny("resnet18", zero_init_residual=True).layers)
    assert all(b.bn2.weight.abs().sum() > 0 for b in tiny("resnet18").layers)  # off by default
    x = torch.rand(2, 16, 8, 8)
    block = m.layers[1]  # identity shortcut: the zeroed block passes its (non-negative) input through
    assert torch.equal(block(x.relu()), x.relu())


def test_resnet18_keeps_the_parameter_names_of_older_checkpoints(tmp_path):
    m = tiny("resnet18")
    keys = set(m.state_dict())
    assert {"normalize.mean", "normalize.std", "stem.0.weight", "stem.1.running_var", "layers.0.conv1.weight",
            "layers.0.bn1.weight", "layers.7.bn2.bias", "layers.2.shortcut.0.weight",
            "layers.2.shortcut.1.weight"} <= keys
    assert len(keys) == 122  # as the ResNet18 class before resnet.py existed (checked against it)
    assert not any(k.startswith("layers.0.shortcut") for k in keys)  # identity shortcut in the first block
    # a backbone.json written before model.stem existed: kwargs {"width": ...} only → the CIFAR stem
    save_backbone(tmp_path, m, model_cfg(backbone="resnet18", width=4), 3, 32)
    meta = json.loads((tmp_path / "backbone.json").read_text())
    meta["kwargs"] = {"width": 4}
    (tmp_path / "backbone.json").write_text(json.dumps(meta))
    x = torch.rand(2, 3, 32, 32)
    old = load_backbone(tmp_path)
    assert old.stem_kind == "cifar" and torch.equal(old(x), m(x))


@pytest.mark.parametrize("name, size", [("resnet50", 72), ("resnet18", 72), ("resnet18", 32)])
def test_save_load_round_trip_and_onnx_export(tmp_path, name, size):
    torch.manual_seed(0)
    cfg = model_cfg(backbone=name, width=4, zero_init_residual=True)
    m = backbone_from_config(cfg, 3, size)
    m.train()
    m(torch.rand(8, 3, size, size))  # non-trivial BatchNorm running statistics
    m.eval()
    save_backbone(tmp_path, m, cfg, 3, size)
    info = backbone_info(tmp_path)
    assert info["kwargs"]["stem"] == ("imagenet" if size > 64 else "cifar") and info["feat_dim"] == m.feat_dim
    x = torch.rand(3, 3, size, size)
    loaded = load_backbone(tmp_path)
    assert torch.equal(loaded(x), m(x))
    if name == "resnet18" and size > 64:  # the ImageNet stem through torch.onnx + onnxruntime (export_backbone
        # checks the ONNX features against PyTorch); resnet50 exports too, but takes ~30 s on 2 CPU cores
        out = export_backbone(tmp_path, "onnx")
        assert out.exists() and json.loads((tmp_path / "export" / "export.json").read_text())


def test_simclr_step_on_a_tiny_resnet50():
    cfg = load_config({"model": {"backbone": "resnet50", "width": 4, "zero_init_residual": True},
                       "method": {"name": "simclr", "proj_hidden": 16, "proj_dim": 8}, "train": {"batch_size": 4}})
    torch.manual_seed(0)
    m = build_method(cfg, 3, image_size=72)
    assert m.backbone.stem_kind == "imagenet" and m.backbone.feat_dim == 128
    before = m.backbone.stem[0].weight.detach().clone()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    loss = m([torch.rand(4, 3, 72, 72), torch.rand(4, 3, 72, 72)])
    assert torch.isfinite(loss)
    loss.backward()
    opt.step()
    assert not torch.equal(before, m.backbone.stem[0].weight)


def test_backbone_json_records_the_stem_the_weights_fit(tmp_path):
    cfg = model_cfg(backbone="resnet18", width=4)
    m = backbone_from_config(cfg, 3).eval()  # image size unknown when built: cifar
    save_backbone(tmp_path, m, cfg, 3, 96)  # saved with the size that would have picked imagenet
    assert backbone_info(tmp_path)["kwargs"]["stem"] == "cifar"
    x = torch.rand(2, 3, 96, 96)
    assert torch.equal(load_backbone(tmp_path)(x), m(x))
