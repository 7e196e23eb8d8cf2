"""torch.distributed helpers: rank/world size, autograd-correct gathers, and synced BatchNorm on any device.

Gradients: ``gather`` uses ``torch.distributed.nn.functional.all_gather`` whose backward *sums* the incoming
gradients over ranks. Combined with DDP's gradient averaging this gives exactly the gradient of the global-batch
loss, whether a rank computes the loss of its local anchors against gathered candidates (NT-Xent) or the same
global loss as every other rank (Barlow Twins / VICReg statistics). Tests compare against a single process.
"""
from __future__ import annotations

import gc
import os
import warnings

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_autograd
from torch import nn


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main() -> bool:
    return rank() == 0


def launched_by_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_from_env(device: str) -> torch.device:
    """Initialise the process group from torchrun's environment (gloo on CPU, nccl on CUDA) and return this
    rank's device."""
    if not is_dist():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend)
    if device.startswith("cuda"):
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device(device)


def shutdown() -> None:
    """Destroy the process group (all ranks, after a barrier) so that no gloo/nccl worker thread outlives the
    interpreter; a no-op outside torch.distributed."""
    if is_dist():
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank; a no-op outside torch.distributed."""
    if is_dist():
        dist.barrier()


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank (a picklable value); ``obj`` itself outside torch.distributed."""
    if not is_dist() or world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from all ranks along dim 0, rank order, with gradients flowing back to every rank."""
    if not is_dist() or world_size() == 1:
        return x
    with warnings.catch_warnings():  # deprecated in favour of a non-autograd API; this one is autograd-correct
        warnings.simplefilter("ignore", FutureWarning)
        return torch.cat(dist_autograd.all_gather(x.contiguous()), 0)


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Autograd-aware sum over ranks."""
    if not is_dist() or world_size() == 1:
        return x
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return dist_autograd.all_reduce(x.contiguous(), op=dist.ReduceOp.SUM)


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose batch statistics are computed over all ranks (autograd all-reduce), for backends where
    ``nn.SyncBatchNorm`` is not available (CPU / gloo). Identical to ``nn.BatchNorm*d`` in a single process."""

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {x.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_dist() and world_size() > 1):
            return super().forward(x)
        dims = [0] + list(range(2, x.dim()))
        count = torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype, device=x.device)
        stats = all_reduce_sum(torch.cat([x.sum(dims), (x * x).sum(dims), count]))
        c = x.shape[1]
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1).clamp_min(1), alpha=m)
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Synced BatchNorm for DDP: torch's SyncBatchNorm on GPUs, :class:`GlobalBatchNorm` elsewhere.

    The converted layers keep the original ``weight``/``bias`` Parameter objects (and buffers), so an optimiser
    built before the conversion still updates them. A submodule with ``local_batchnorm = True`` (e.g. MoCo's key
    encoder, whose batch statistics must stay per shuffled group) is left as it is."""
    return _convert(module, device.type == "cuda")


def _convert(module: nn.Module, cuda: bool) -> nn.Module:
    if getattr(module, "local_batchnorm", False):
        return module
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, (GlobalBatchNorm,
                                                                                       nn.SyncBatchNorm)):
        cls = nn.SyncBatchNorm if cuda else GlobalBatchNorm
        out = cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        if module.affine:  # the same Parameter objects: the optimiser's references stay valid
            out.weight, out.bias = module.weight, module.bias
        if module.track_running_stats:
            out.running_mean, out.running_var = module.running_mean, module.running_var
            out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, _convert(child, cuda))
    return out
