"""Horovod's names that a training script touches besides the optimizer and the collectives:
``Compression``, the reduction ops and the ``*_built()`` queries, with what each means here
(docs/api.md, "Horovod's names")."""

from __future__ import annotations

from dataclasses import dataclass

from pcasgd.errors import ConfigError


@dataclass(frozen=True)
class Compressor:
    """One of :class:`Compression`'s choices; ``name`` is ``--compression``'s value."""

    name: str


class Compression:
    """``hvd.Compression``: what the exchange sends. ``fp16`` and ``bf16`` halve the bytes of the
    decentralized snapshots (ssgd and odsgd: fp16 only, MPI sums no bfloat16)."""

    none = Compressor("none")
    fp16 = Compressor("fp16")
    bf16 = Compressor("bf16")


Average = "average"  # ssgd: the mean gradient; the decentralized modes mix weighted means
Sum = "sum"  # ssgd: the summed gradient
Adasum = "adasum"  # refused: pcasgd has no Adasum reduction
OPS = (Average, Sum, Adasum)


def nccl_built() -> bool:
    """False: pcasgd's exchange is MPI (GPU tensors go through host memory, docs/mpi.md)."""
    return False


def gloo_built() -> bool:
    return False


def mpi_built() -> bool:
    return True


def horovod_options(options: dict, mode: str) -> tuple[dict, bool]:
    """``options`` with Horovod's ``compression=`` turned into pcasgd's setting, and whether
    ``op=`` asks for a sum (ssgd); a one-line refusal where either has no meaning."""
    options = dict(options)
    compression = options.pop("compression", None)
    if compression is not None:
        name = compression.name if isinstance(compression, Compressor) else compression
        if name not in ("none", "fp16", "bf16"):
            raise ConfigError(f"compression={compression!r}: use pcasgd.Compression.none, .fp16 or .bf16")
        options["compression"] = name
    op = options.pop("op", None)
    if op is None or op == Average:
        return options, False
    if op == Sum and mode == "ssgd":
        return options, True
    if op == Adasum:
        raise ConfigError("op=Adasum: pcasgd has no Adasum reduction; use op=pcasgd.Average (or leave op out)")
    raise ConfigError(
        f"op={op!r} with mode {mode!r}: only op=pcasgd.Average, and op=pcasgd.Sum with ssgd, mean something here"
    )
