"""How agents see each other across processes: MPI one-sided windows, guarded waits."""
