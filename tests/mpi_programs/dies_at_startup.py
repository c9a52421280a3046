"""`pcasgd train --fault-tolerant` whose last rank is killed (SIGKILL) at start-up, right before
the ranks' first collective of the recovery set-up: the survivors must end with one line each.
Arguments: the train flags."""

import os
import signal
import sys

from pcasgd import cli
from pcasgd.runtime.recovery import Recovery

joining = Recovery.on


def dies_on_the_last_rank(comm, *args, **kwargs):
    if comm.Get_rank() == comm.Get_size() - 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return joining(comm, *args, **kwargs)


Recovery.on = dies_on_the_last_rank
sys.exit(cli.main(["train", "--backend", "mpi", *sys.argv[1:]]))
