#!/bin/sh
# benchmarks/fault_tolerance.py regrow: the hosts allow 4 ranks on this machine
echo localhost:4
