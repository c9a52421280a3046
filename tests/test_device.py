"""Device choice per rank and the host staging of GPU buffers (exercised on the CPU)."""

from __future__ import annotations

import pytest
import torch

from pcasgd.errors import ConfigError
from pcasgd.runtime.device import local_rank, select_device, stage_through_host
from pcasgd.transport.staging import HostStaging


def test_local_rank_comes_from_the_launcher_that_started_the_process():
    assert local_rank({}) == 0
    assert local_rank({"SLURM_LOCALID": "3"}) == 3
    assert local_rank({"HOROVOD_LOCAL_RANK": "2"}) == 2
    # mpirun inside an allocation: Open MPI's own variable wins over Slurm's.
    assert local_rank({"OMPI_COMM_WORLD_LOCAL_RANK": "1", "SLURM_LOCALID": "0"}) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")
def test_without_a_gpu_cuda_is_refused_and_auto_falls_back_to_the_cpu():
    assert select_device("cpu") == torch.device("cpu")
    assert select_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="no CUDA device is visible"):
        select_device("cuda", {"CUDA_VISIBLE_DEVICES": ""})
    with pytest.raises(ConfigError, match="unknown device 'tpu'"):
        select_device("tpu")


def test_when_buffers_are_staged_through_the_host():
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert not stage_through_host(cpu, "auto")
    assert stage_through_host(gpu, "auto", cuda_aware=lambda: False)
    assert not stage_through_host(gpu, "auto", cuda_aware=lambda: True)
    assert stage_through_host(cpu, "always") and stage_through_host(gpu, "always", cuda_aware=lambda: True)
    assert stage_through_host(gpu, "auto", cuda_aware=lambda: None)  # an MPI that cannot say: staged
    assert not stage_through_host(gpu, "never", cuda_aware=lambda: True)
    assert not stage_through_host(gpu, "never", cuda_aware=lambda: None)  # the user's word for an MPI that cannot say
    with pytest.raises(ConfigError, match="not CUDA-aware"):
        stage_through_host(gpu, "never", cuda_aware=lambda: False)
    assert not stage_through_host(cpu, "never")
    with pytest.raises(ConfigError, match="unknown host staging"):
        stage_through_host(cpu, "sometimes")


def test_active_staging_copies_into_reused_host_buffers_and_back():
    staging = HostStaging(torch.device("cpu"), active=True)
    first = torch.arange(6.0)
    host = staging.to_host(first, "send")
    assert torch.equal(host, first) and host.data_ptr() != first.data_ptr()
    again = staging.to_host(first * 2, "send")
    assert again.data_ptr() == host.data_ptr() and torch.equal(again, first * 2)  # reused, overwritten
    assert staging.to_host(first, "other").data_ptr() != host.data_ptr()
    back = staging.to_device(again)
    assert torch.equal(back, again) and back.data_ptr() != again.data_ptr()
    assert staging.host_buffer("receive", (3,), torch.float64).dtype == torch.float64


def test_inactive_staging_hands_mpi_the_tensors_themselves():
    staging = HostStaging(torch.device("cpu"), active=False)
    tensor = torch.ones(4)
    assert staging.to_host(tensor, "send").data_ptr() == tensor.data_ptr()
    assert staging.to_device(tensor) is tensor
