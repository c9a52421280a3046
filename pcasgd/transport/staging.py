"""Host copies of device tensors for MPI, and back.

When a rank computes on a GPU and its MPI cannot read GPU memory, every buffer MPI touches (the
payload a rank publishes into its window, the gradient of an allreduce, a weight message) is
first copied into a host buffer kept for that purpose, pinned so the copy runs at full speed,
and what MPI delivers is copied back to the device. The logic does not depend on the device:
``active`` on the CPU (``--host-staging always``) makes the same copies, which is how the CPU
tests exercise it.
"""

from __future__ import annotations

import torch
from torch import Tensor


class HostStaging:
    def __init__(self, device: torch.device, active: bool) -> None:
        self.device = device
        self.active = active
        self.pinned = active and device.type == "cuda"
        self._buffers: dict[str, Tensor] = {}

    def to_host(self, tensor: Tensor, key: str) -> Tensor:
        """``tensor`` in host buffer ``key`` (reused: valid until the next call with that key);
        ``tensor`` itself when staging is off."""
        tensor = tensor.detach()
        if not self.active:
            return tensor
        buffer = self.host_buffer(key, tensor.shape, tensor.dtype)
        buffer.copy_(tensor)  # synchronous: MPI may read the buffer as soon as this returns
        return buffer

    def host_buffer(self, key: str, shape: torch.Size | tuple[int, ...], dtype: torch.dtype) -> Tensor:
        """A host buffer for MPI to write into (pinned for a GPU), or a device buffer when staging is off."""
        buffer = self._buffers.get(key)
        if buffer is None or buffer.shape != torch.Size(shape) or buffer.dtype != dtype:
            if self.active:
                buffer = torch.empty(shape, dtype=dtype, pin_memory=self.pinned)
            else:
                buffer = torch.empty(shape, dtype=dtype, device=self.device)
            self._buffers[key] = buffer
        return buffer

    def to_device(self, tensor: Tensor) -> Tensor:
        """A device copy of host ``tensor`` (what MPI delivered); ``tensor`` itself when staging is off."""
        if not self.active:
            return tensor
        return tensor.to(self.device, copy=True)
