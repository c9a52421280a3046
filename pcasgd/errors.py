"""Error types raised at pcasgd's boundaries.

Every user mistake (bad topology, bad delay spec, bad option) raises a subclass of
:class:`PcasgdError`, so the CLI can print one clear line instead of a traceback.
"""


class PcasgdError(Exception):
    """Base class of every error pcasgd raises on purpose."""


class TopologyError(PcasgdError, ValueError):
    """A graph or mixing matrix that cannot be used for consensus."""


class DelaySpecError(PcasgdError, ValueError):
    """A delay or straggler spec string that does not parse or does not fit the run."""


class ConfigError(PcasgdError, ValueError):
    """An algorithm or run option out of range, or options that contradict each other."""


class RunFilesError(PcasgdError, OSError):
    """A run file could not be written (a full disk, no permission); what was written before is kept."""


class UsageError(PcasgdError, RuntimeError):
    """An API called out of order (for example ``step()`` after ``close()``)."""


class TrainingFailedError(PcasgdError, RuntimeError):
    """Training started but could not finish (a rank stalled, died, or diverged)."""


class StallError(TrainingFailedError, TimeoutError):
    """A neighbour stopped publishing before the run ended."""


class DivergenceError(TrainingFailedError, FloatingPointError):
    """NaN or Inf appeared in an agent's parameters."""


class RingTooShortError(TrainingFailedError):
    """A reader named a snapshot that its owner's ring of snapshots no longer holds: the ring was
    sized for less lead than the owner took (a bug in the sizing, not a timing accident)."""


class ProcessFailedError(PcasgdError, RuntimeError):
    """A process of the communicator has failed, or a survivor revoked the communicator
    (``--fault-tolerant``: the runtime recovers; without it the run fails)."""


class NeighbourFinishedError(Exception):
    """``dsgd``, asynchronous: a neighbour this rank waits for has ended its run and will publish
    nothing more. The run is over (a rank finished its iterations), so this rank ends it too."""
