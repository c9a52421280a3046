#!/usr/bin/env bash
# Accuracy under delay (docs/RESULTS.md): Fashion-MNIST, LeNet-5, simulator, ring, 2 epochs,
# 3 seeds, every decentralized mode and the PC-ASGD ablations, for AGENTS agents.
#   bash benchmarks/accuracy_under_delay.sh 4 [OUT]     # then again with 8
# Each grid is a `pcasgd compare` run; cells already finished are read back, not rerun.
set -euo pipefail
agents="${1:?usage: accuracy_under_delay.sh AGENTS [OUT]}"
out="${2:-runs/accuracy-$agents}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
common=(--backend sim --agents "$agents" --dataset fashion-mnist --model lenet5 --epochs 2 --seeds 0 1 2)
delays=(none fixed:2 fixed:4 fixed:8 straggler:3=2.0)

# dsgd waits for its neighbours: a delay costs it time, never accuracy (one delay is enough).
python -m pcasgd.cli compare "${common[@]}" --modes dsgd --delays none --out "$out/dsgd"
python -m pcasgd.cli compare "${common[@]}" --delays "${delays[@]}" --out "$out/modes" \
    --modes asgd pcasgd predict clip \
    --variant "pcasgd-pv=--mode pcasgd-pv --pv-warmup-epochs 0" \
    --variant "theta 0.25=--mode pcasgd --theta 0.25" \
    --variant "theta 0.75=--mode pcasgd --theta 0.75" \
    --variant "taylor predictor=--mode pcasgd --predictor taylor"
# Clip weights differ only where the topology's weights are not uniform: a star, Metropolis weights.
python -m pcasgd.cli compare "${common[@]}" --delays fixed:4 straggler:3=2.0 --out "$out/clip-weights" \
    --variant "rescale=--mode pcasgd --topology star --weights metropolis --clip-weights rescale" \
    --variant "uniform=--mode pcasgd --topology star --weights metropolis --clip-weights uniform"
