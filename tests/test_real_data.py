"""Training on the real datasets: Fashion-MNIST (Debian's package, which the test setup installs)
under mpirun, and the CIFAR-10 JPEG copy in ../shared/data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pcasgd.app.data import load
from pcasgd.app.models import build_model
from tests.mpi_support import ROOT, needs_mpirun, train

CIFAR_ARCHIVE = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


@needs_mpirun
@pytest.mark.timeout(900)
def test_fashion_mnist_lenet5_on_four_mpi_ranks_reaches_085(fashion_mnist, tmp_path):
    """Acceptance: 4 agents under mpirun, 5 epochs, pcasgd. Lock-step, so the figure is the same every run."""
    out = tmp_path / "run"
    flags = ["--mode", "pcasgd", "--dataset", "fashion-mnist", "--model", "lenet5", "--epochs", "5", "--deterministic"]
    result = train(4, *flags, "--out", str(out), timeout=800)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final"]["test_accuracy"] >= 0.85, summary["final"]
    assert summary["partition"]["samples_per_agent"] == [15_000] * 4


@pytest.mark.skipif(not CIFAR_ARCHIVE.is_file(), reason=f"{CIFAR_ARCHIVE} is missing (../shared/data)")
def test_cifar10_jpeg_copy_loads_whole_and_a_resnet20_step_runs():
    data = load("cifar10", CIFAR_ARCHIVE)
    assert tuple(data.train_x.shape) == (50_000, 3, 32, 32) and tuple(data.test_x.shape) == (10_000, 3, 32, 32)
    assert np.bincount(data.train_y.numpy()).tolist() == [5000] * 10
    assert np.bincount(data.test_y.numpy()).tolist() == [1000] * 10
    inputs = data.inputs(data.train_x[:64], torch.Generator().manual_seed(0))
    assert abs(float(inputs.mean())) < 0.3 and 0.7 < float(inputs.std()) < 1.3  # normalized
    torch.manual_seed(0)  # the initial loss of an unseeded ResNet-20 ranged 1.1..6.9 over seeds
    model = build_model("resnet20", data.input_shape, data.classes)
    sgd = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(5):  # the images and labels agree: a few steps on one batch lower its loss
        sgd.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(inputs), data.train_y[:64])
        loss.backward()
        assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in model.parameters())
        sgd.step()
        losses.append(float(loss.detach()))
    assert np.isfinite(losses).all() and losses[-1] < 0.8 * losses[0], losses
