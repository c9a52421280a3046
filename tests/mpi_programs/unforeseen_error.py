"""`pcasgd train` on every rank with an unforeseen exception (not a pcasgd error) raised where the
training would start: the rank must end with one line and without MPI_Finalize (--fault-tolerant),
or end the whole job at once (without it). Arguments: the train flags."""

import sys

from pcasgd import cli


def broken(*args, **kwargs):
    raise ZeroDivisionError("an unforeseen failure")


cli.run_training = broken
sys.exit(cli.main(["train", "--backend", "mpi", *sys.argv[1:]]))
