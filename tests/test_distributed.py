"""Two CPU processes (gloo, DDP, synced BatchNorm) must give the same loss and gradients as one process with the
same global batch: the gathers in every loss that needs the whole batch (NT-Xent, Barlow Twins, VICReg, MoCo's queue,
NNCLR's support queue, W-MSE's whitening, TiCo's covariance, SupCon's and SuNCEt's labels, DCLW's softmax) are
autograd-correct (no 1/world_size error) and BatchNorm statistics are global. A warm-up forward first fills queues and
running state."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from selfsup.config import load_config
from selfsup.distributed import convert_sync_batchnorm
from selfsup.methods import build_method

from .helpers import leave_worker

METHODS = ["simclr", "barlow_twins", "vicreg", "moco", "byol", "simsiam", "moco_v3", "nnclr", "dcl", "dclw", "wmse",
           "tico", "supcon", "swav", "dino", "suncet", "mae", "ibot", "ijepa"]
EXTRA = {"moco": {"queue_size": 32}, "nnclr": {"queue_size": 12, "pred_hidden": 16}, "moco_v3": {"pred_hidden": 16},
         "wmse": {"proj_dim": 4, "w_size": 8},
         "swav": {"num_prototypes": 6, "queue_size": 8, "freeze_prototypes_fraction": 0.0},
         "mae": {"decoder_dim": 8, "decoder_depth": 1, "decoder_heads": 2},
         "ibot": {"out_dim": 12, "mask_probability": 1.0, "koleo_weight": 0.1},
         "ijepa": {"pred_dim": 8, "pred_depth": 1, "pred_heads": 2, "min_keep": 2}}
VIT = {"backbone": "vit", "vit_dim": 8, "vit_depth": 1, "vit_heads": 2}  # 12x12 images: 9 patches of 4x4
MODEL = {"mae": VIT, "ibot": VIT, "ijepa": VIT}
LABELS = torch.tensor([0, 1, 0, 2, 1, 1, 0, 2])
LABELS_OF = {"suncet": torch.tensor([0, 1, -1, 2, 2, -1, 0, 1])}  # -1: unlabelled; one labelled class-2 per rank
GLOBAL_BATCH = 8


def _setup(method):
    cfg = load_config({"model": {"widths": [4, 8], "pool": 1, **MODEL.get(method, {})},
                       "train": {"batch_size": GLOBAL_BATCH},
                       "method": {"name": method, "proj_hidden": 16, "proj_dim": 8, **EXTRA.get(method, {})}})
    torch.manual_seed(0)
    m = build_method(cfg, 1).double()
    g = torch.Generator().manual_seed(1)
    x1 = torch.rand(GLOBAL_BATCH, 1, 12, 12, generator=g, dtype=torch.float64)
    x2 = torch.rand(GLOBAL_BATCH, 1, 12, 12, generator=g, dtype=torch.float64)
    return m, x1, x2


def _grads(m):
    return {n: p.grad.detach().clone() for n, p in m.named_parameters() if p.grad is not None}


def _step(model, method, x1, x2, labels):
    """One warm-up forward (fills queues / running statistics, so the measured step uses them), then the loss."""
    extra = {"labels": labels} if getattr(method, "uses_labels", False) else {}
    with torch.no_grad():
        model([x2, x1], **extra)
    return model([x1, x2], **extra)


def _worker(rank, world, init_file, methods, out_dir):
    """Every method in one pair of processes (starting processes costs more than the steps)."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    for method in methods:
        m, x1, x2 = _setup(method)
        m = convert_sync_batchnorm(m, torch.device("cpu"))
        ddp = torch.nn.parallel.DistributedDataParallel(m, static_graph=True)  # as the trainer
        n = GLOBAL_BATCH // world
        sl = slice(rank * n, (rank + 1) * n)  # the trainer's split (selfsup.data.loader): rank r's block
        loss = _step(ddp, m, x1[sl], x2[sl], LABELS_OF.get(method, LABELS)[sl])
        loss.backward()
        losses = [torch.zeros(1, dtype=torch.float64) for _ in range(world)]
        dist.all_gather(losses, loss.detach().view(1))
        if rank == 0:
            torch.save({"loss": torch.cat(losses), "grads": _grads(m)}, f"{out_dir}/{method}.pt")
        del ddp, loss, m
    leave_worker()


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(2, str(out / "init"), METHODS, str(out)), nprocs=2, join=True)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_ddp_two_processes_match_one_process(method, two_process_results):
    res = torch.load(two_process_results / f"{method}.pt", weights_only=True)
    m, x1, x2 = _setup(method)
    loss = _step(m, m, x1, x2, LABELS_OF.get(method, LABELS))
    loss.backward()
    ref = _grads(m)
    # the global loss is the mean of the ranks' losses (DDP averages their gradients the same way)
    assert float(res["loss"].mean()) == pytest.approx(float(loss.detach()), rel=1e-9, abs=1e-12)
    assert ref.keys() == res["grads"].keys()
    for k in ref:
        torch.testing.assert_close(res["grads"][k], ref[k], rtol=1e-7, atol=1e-10, msg=k)


def test_global_batchnorm_equals_batchnorm_in_one_process():
    from selfsup.distributed import GlobalBatchNorm

    bn = torch.nn.BatchNorm2d(3)
    gbn = convert_sync_batchnorm(torch.nn.Sequential(bn), torch.device("cpu"))[0]
    assert isinstance(gbn, GlobalBatchNorm)
    x = torch.randn(5, 3, 4, 4)
    torch.testing.assert_close(gbn(x), bn(x))
