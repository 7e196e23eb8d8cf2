"""channels_last and AMP are switches that must not change results beyond tolerance."""
import pytest
import torch

from selfsup.config import load_config
from selfsup.methods import build_method
from selfsup.train.loop import autocast


def _loss(method_name, channels_last=False, amp=False):
    cfg = load_config({"model": {"widths": [8, 16], "pool": 2},
                       "method": {"name": method_name, "proj_hidden": 32, "proj_dim": 16}})
    torch.manual_seed(0)
    m = build_method(cfg, 1)
    g = torch.Generator().manual_seed(0)
    views = [torch.rand(16, 1, 16, 16, generator=g) for _ in range(2)]
    if channels_last:
        m = m.to(memory_format=torch.channels_last)
        views = [v.contiguous(memory_format=torch.channels_last) for v in views]
    with autocast(torch.device("cpu"), amp):
        loss = m(views)
    loss.backward()
    grad = m.backbone.features[0][0].weight.grad.clone()
    return float(loss.detach()), grad


@pytest.mark.parametrize("method", ["simclr", "vicreg"])
def test_channels_last_same_loss_and_gradients(method):
    l0, g0 = _loss(method)
    l1, g1 = _loss(method, channels_last=True)
    assert l1 == pytest.approx(l0, rel=1e-5)
    torch.testing.assert_close(g1, g0, rtol=1e-3, atol=1e-5)


def test_bf16_autocast_close_to_fp32():
    l0, g0 = _loss("simclr")
    l1, g1 = _loss("simclr", amp=True)
    assert l1 == pytest.approx(l0, rel=3e-2)
    cos = torch.nn.functional.cosine_similarity(g0.flatten(), g1.flatten(), dim=0)
    assert float(cos) > 0.95


def test_amp_auto_follows_the_device_and_the_cpu_flags():
    from selfsup.train.setup import use_amp
    plain = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma avx512f\n"
    bf16 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n"
    amx = "processor\t: 0\nflags\t\t: fpu avx2 amx_tile amx_bf16\n"
    cpu = torch.device("cpu")
    assert not use_amp("auto", cpu, plain)  # AVX-512 without bf16: emulated, slower
    assert use_amp("auto", cpu, bf16) and use_amp("auto", cpu, amx)
    assert use_amp("auto", torch.device("cuda"), plain)
    assert use_amp(True, cpu, plain) and not use_amp(False, cpu, bf16)  # explicit wins
    cfg = load_config({"train": {"amp": "auto"}})
    assert cfg.train.amp == "auto"
