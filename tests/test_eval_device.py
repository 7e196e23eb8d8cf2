"""The evaluation's kNN and linear probe on a CUDA device give the CPU's results (within float tolerance): the same
k and L2 chosen, accuracies within half a point. Runs where a GPU is present (benchmarks/gpu.py runs it there)."""
import pytest
import torch

from selfsup.config import load_config
from selfsup.evaluate.probes import LabelledFeatures
from selfsup.evaluate.probes import probe_all


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_knn_and_linear_probe_agree_between_cpu_and_cuda():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(10, 32, generator=g) * 2
    y = torch.randint(0, 10, (3000,), generator=g)
    f = centers[y] + torch.randn(3000, 32, generator=g) * 2.5
    e = load_config({}).eval
    tr, va = torch.arange(0, 2000), torch.arange(2000, 2500)
    args = (LabelledFeatures(f[:2500], y[:2500]), (tr, va), LabelledFeatures(f[2500:], y[2500:]), e)
    cpu, gpu = probe_all(*args, device="cpu"), probe_all(*args, device="cuda")
    assert torch.cuda.max_memory_allocated() > 0  # the probes ran on the GPU
    assert gpu["knn_k"] == cpu["knn_k"] and abs(gpu["knn_test"] - cpu["knn_test"]) < 0.005
    assert gpu["linear_l2"] == cpu["linear_l2"] and abs(gpu["linear_test"] - cpu["linear_test"]) < 0.005
    assert 0.3 < cpu["linear_test"] < 0.99  # a task neither trivial nor hopeless
