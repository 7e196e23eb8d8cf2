import pytest
import torch

from selfsup.methods.base import cosine_momentum, ema_update, frozen_copy
from selfsup.models import ResNet18, SmallCNN, prediction_head, projection_head


def test_small_cnn_feature_dim_and_reference_size():
    m = SmallCNN(1, (32, 64, 128), pool=2)
    assert m(torch.rand(3, 1, 28, 28)).shape == (3, 128 * 4) and m.feat_dim == 512
    conv_params = sum(p.numel() for n, p in m.named_parameters() if p.dim() == 4)
    assert 280_000 < conv_params < 300_000  # the 6-conv 32-64-128 reference CNN of measured.md


def test_resnet18_cifar_stem_and_shapes():
    m = ResNet18(3)
    assert m.stem[0].kernel_size == (3, 3) and m.stem[0].stride == (1, 1)
    assert not any(isinstance(x, torch.nn.MaxPool2d) for x in m.modules())
    m.eval()
    assert m(torch.rand(2, 3, 32, 32)).shape == (2, 512)
    assert 11_000_000 < sum(p.numel() for p in m.parameters()) < 11_300_000


def test_heads_compose():
    p = projection_head(16, 32, 8, layers=3, last_bn=True)
    assert [type(x).__name__ for x in p] == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU",
                                             "Linear", "BatchNorm1d"]
    assert p(torch.rand(4, 16)).shape == (4, 8)
    assert prediction_head(8, 4)(torch.rand(4, 8)).shape == (4, 8)


def test_ema_update_and_cosine_momentum():
    online = torch.nn.Linear(2, 1)
    target = frozen_copy(online)
    assert all(not p.requires_grad for p in target.parameters())
    with torch.no_grad():
        online.weight.fill_(1.0)
        target.weight.fill_(0.0)
    ema_update(target, online, 0.9)
    assert torch.allclose(target.weight, torch.full_like(target.weight, 0.1))
    assert cosine_momentum(0.99, 0.0) == pytest.approx(0.99)
    assert cosine_momentum(0.99, 0.5) == pytest.approx(0.995)
    assert cosine_momentum(0.99, 1.0) == pytest.approx(1.0)


def test_cnn_stem_auto_halves_the_first_stage_above_64_px_and_round_trips(tmp_path):
    from selfsup.config import load_config
    from selfsup.models import backbone_from_config, backbone_info, load_backbone, save_backbone
    cfg = load_config({"model": {"widths": [4, 8], "pool": 1}}).model
    small, large = backbone_from_config(cfg, 3, 64), backbone_from_config(cfg, 3, 96)
    assert (small.stem_kind, large.stem_kind) == ("cifar", "imagenet")
    x = torch.rand(2, 3, 96, 96)
    assert small.features[0](small.normalize(x)).shape == (2, 4, 96, 96)
    assert large.features[0](large.normalize(x)).shape == (2, 4, 48, 48)  # stride-2 first conv
    assert sum(p.numel() for p in small.parameters()) == sum(p.numel() for p in large.parameters())
    forced = backbone_from_config(load_config({"model": {"widths": [4, 8], "stem": "cifar"}}).model, 3, 96)
    assert forced.stem_kind == "cifar"
    save_backbone(tmp_path, large.eval(), cfg, 3, 96)
    assert backbone_info(tmp_path)["kwargs"]["stem"] == "imagenet"
    assert torch.equal(load_backbone(tmp_path)(x), large(x))


def test_readout_pool_saves_the_trained_weights_with_a_finer_spatial_readout(tmp_path):
    import torch.nn.functional as F
    from selfsup.config import ConfigError, load_config
    from selfsup.models import backbone_from_config, backbone_info, load_backbone, save_backbone
    cfg = load_config({"model": {"widths": [4, 8], "pool": 1, "readout_pool": 2}}).model
    torch.manual_seed(0)
    trained = backbone_from_config(cfg, 1, 28).eval()
    assert trained.feat_dim == 8  # pre-training (the heads) sees the global average
    save_backbone(tmp_path, trained, cfg, 1, 28)
    info, loaded = backbone_info(tmp_path), load_backbone(tmp_path)
    assert info["kwargs"]["pool"] == 2 and info["feat_dim"] == loaded.feat_dim == 32
    x = torch.rand(3, 1, 28, 28)
    maps = trained.features(trained.normalize(x))
    assert torch.allclose(loaded(x), F.adaptive_avg_pool2d(maps, 2).flatten(1), atol=1e-6)
    # the 2x2 cells average back to the training readout: same weights, finer grid
    assert torch.allclose(loaded(x).view(3, 8, 4).mean(-1), trained(x), atol=1e-6)
    vit = load_config({"model": {"backbone": "vit", "vit_dim": 16, "vit_heads": 2, "vit_depth": 1,
                                 "readout_pool": 2}}).model
    (tmp_path / "v").mkdir()
    save_backbone(tmp_path / "v", backbone_from_config(vit, 1, 28), vit, 1, 28)
    assert backbone_info(tmp_path / "v")["kwargs"]["pool"] == "grid" and load_backbone(tmp_path / "v").feat_dim == 64
    with pytest.raises(ConfigError, match="readout_pool"):
        load_config({"model": {"backbone": "resnet18", "readout_pool": 2}})


def test_readout_backbone_reads_the_training_weights_as_the_saved_backbone_does(tmp_path):
    from selfsup.config import load_config
    from selfsup.models import backbone_from_config, load_backbone, readout_backbone, save_backbone
    cfg = load_config({"model": {"widths": [4, 8], "pool": 1, "readout_pool": 2}}).model
    torch.manual_seed(0)
    trained = backbone_from_config(cfg, 1, 28).train()
    save_backbone(tmp_path, trained, cfg, 1, 28)
    rng = torch.get_rng_state()
    view = readout_backbone(trained, cfg, 1, 28)
    assert torch.equal(torch.get_rng_state(), rng)  # building the view draws no random numbers from the run's stream
    assert view.training and view.feat_dim == 32 and trained.feat_dim == 8
    x = torch.rand(3, 1, 28, 28)
    assert torch.allclose(view.eval()(x), load_backbone(tmp_path)(x), atol=1e-6)
    plain = load_config({"model": {"widths": [4, 8], "pool": 1}}).model
    assert readout_backbone(trained, plain, 1, 28) is trained
