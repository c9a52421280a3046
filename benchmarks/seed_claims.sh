#!/usr/bin/env bash
# The seed papers' claims at CPU scale (docs/RESULTS.md), simulator, 3 seeds unless said:
#   bash benchmarks/seed_claims.sh [OUT] [fmnist|cifar|all]
# Every grid is a `pcasgd compare` run; cells already finished are read back, not rerun.
set -euo pipefail
out="${1:-runs/claims}"
which="${2:-all}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
fm=(--backend sim --dataset fashion-mnist --model lenet5 --epochs 2 --seeds 0 1 2 --delays none)

if [ "$which" != cifar ]; then
  # DC-ASGD (Zheng et al. 2017): DC-ASGD-a < DC-ASGD-c < SSGD ~ ASGD in test error, 4 and 8 workers.
  for workers in 4 8; do
    python -m pcasgd.cli compare "${fm[@]}" --agents "$workers" --out "$out/dcasgd-$workers" \
        --modes ssgd ps-asgd dcasgd-c dcasgd-a
  done
  # Staleness-aware ASGD (Zhang et al. 2016): 16 workers, n-softsync for n = 1, 4, 16, with a fixed
  # learning rate and with alpha / tau. Claim: fixed alpha degrades as n grows, alpha / tau holds.
  # At momentum 0.9 (ssgd's) and 0 (the default of the asynchronous server modes, softsync included).
  variants=()
  for momentum in 0.9 0; do
    for n in 1 4 16; do
      for rule in "fixed lr:constant" "lr/tau:inverse"; do
        variants+=(--variant
          "n $n, ${rule%%:*}, momentum $momentum=--mode sasgd --sasgd-n $n --sasgd-lr ${rule##*:} --momentum $momentum")
      done
    done
  done
  python -m pcasgd.cli compare "${fm[@]}" --agents 16 --out "$out/sasgd" "${variants[@]}"
  # OD-SGD (Xu et al. 2020): accuracy equal to or above SSGD (speed: benchmarks/protocol.py, odsgd_overlap.py).
  python -m pcasgd.cli compare "${fm[@]}" --agents 4 --out "$out/odsgd" --modes ssgd odsgd \
      --variant "odsgd, warm-up 0=--mode odsgd --odsgd-warmup 0"
fi
if [ "$which" != fmnist ]; then
  # DC-ASGD's ordering on its own benchmark, CIFAR-10 ResNet-20, 4 workers, 1 epoch, 1 seed.
  python -m pcasgd.cli compare --backend sim --dataset cifar10 --data-dir "${CIFAR10:-../shared/data/cifar10-jpeg.tar.gz}" \
      --model resnet20 --epochs 1 --batch-size 64 --weight-decay 5e-4 --seeds 0 --delays none --agents 4 \
      --out "$out/dcasgd-cifar10" --modes ssgd ps-asgd dcasgd-c dcasgd-a
fi
