"""The deadline header that a rank writes and its watchdog process reads: a seqlock, so the
watchdog never acts on a half-written header (which once ended healthy ranks at random)."""

from __future__ import annotations

import math
import mmap
import subprocess
import textwrap
import time

import pytest

from pcasgd.errors import ConfigError
from pcasgd.transport.deadline import SIZE, Deadline, read_header
from tests.mpi_support import PYTHON, ROOT

WRITER = textwrap.dedent(
    """
    import mmap, sys, time
    from pcasgd.transport.deadline import SIZE, Header, write_header
    with open(sys.argv[1], "r+b") as handle:
        memory = mmap.mmap(handle.fileno(), SIZE)
    seq, i, end = 0, 0, time.monotonic() + float(sys.argv[2])
    while time.monotonic() < end:
        i += 1
        seq = write_header(memory, seq, Header(bool(i % 2), float(i), i + 0.5, f"call {i}" * (i % 7)))
    print(i)
    """
)


def test_the_watchdog_never_accepts_a_torn_header_from_a_writer_in_another_process(tmp_path):
    """Each header the writer writes is self-consistent (limit = started + 0.5, armed = started odd,
    ``what`` names started); every header the reader accepts must be one of them."""
    path = tmp_path / "header"
    path.write_bytes(b"\0" * SIZE)
    seconds = 4.0
    writer = subprocess.Popen([PYTHON, "-c", WRITER, str(path), str(seconds)], cwd=ROOT, stdout=subprocess.PIPE)
    with open(path, "r+b") as handle:
        memory = mmap.mmap(handle.fileno(), SIZE)
    accepted, torn = 0, []
    try:
        end = time.monotonic() + seconds + 30
        while writer.poll() is None and time.monotonic() < end:
            header = read_header(memory)
            if header is None or header.started == 0.0:
                continue
            accepted += 1
            i = int(header.started)
            if (header.armed, header.limit, header.what) != (bool(i % 2), i + 0.5, f"call {i}" * (i % 7)):
                torn.append(header)
    finally:
        memory.close()
    written = int(writer.communicate(timeout=60)[0])
    assert writer.returncode == 0
    assert written > 1000 and accepted > 1000, (written, accepted)  # the two really overlapped
    assert torn == [], f"{len(torn)} torn headers accepted out of {accepted}, e.g. {torn[:3]}"


@pytest.mark.parametrize("seconds", [math.nan, math.inf, 0.0, -1.0])
def test_a_deadline_that_would_never_fire_is_refused(seconds):
    with pytest.raises(ConfigError, match="finite number of seconds > 0"):
        Deadline(0, seconds)
