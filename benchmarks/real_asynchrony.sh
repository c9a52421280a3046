#!/usr/bin/env bash
# PC-ASGD's options under real asynchrony (docs/RESULTS.md): asynchronous `mpirun` jobs of 4
# ranks, ring, 3 seeds, each delay setting of issue 13: a 2x and a 4x straggler, transient
# stragglers, every read 8 snapshots late.
#   bash benchmarks/real_asynchrony.sh GRID [OUT [PREDICTOR]]
# GRID: fmnist-options    Fashion-MNIST LeNet-5, IID: every predictor and option, theta (2 epochs)
#       fmnist-noniid     the same, dirichlet:0.1 shards: asgd against default pcasgd
#       cifar             CIFAR-10 ResNet-20 (short: a fixed 8,000-image subset, 2 epochs,
#                         1,000 test images), IID and dirichlet:0.1: asgd against default pcasgd
#       overlap-predictors  Fashion-MNIST, every mode --overlap: asgd and each predictor, on the
#                           tuning seed 3 only
#       overlap-options P   the same seed, predictor P: age-fresh, age-max, theta, lambda one at a time
#       overlap-report P    seeds 0 1 2: asgd --overlap, pcasgd --overlap --predictor P, blocking
#                           asgd and blocking default pcasgd
# Each grid is a `pcasgd compare` run; cells already finished with the same flags are read back.
set -euo pipefail
grid="${1:?usage: real_asynchrony.sh GRID [OUT [PREDICTOR]] (see its header)}"
out="${2:-runs}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
here="$(cd "$(dirname "$0")/.." && pwd)"
delays=(straggler:3=2 straggler:3=4 transient:0.2=4 fixed:8)
fmnist=(--backend mpi --agents 4 --dataset fashion-mnist --model lenet5 --epochs 2 --checkpoint-every 0)
cifar=(--backend mpi --agents 4 --dataset cifar10 --data-dir "$here/../shared/data/cifar10-jpeg.tar.gz"
    --model resnet20 --train-samples 8000 --test-samples 1000 --epochs 2 --checkpoint-every 0 --momentum 0.9)

# tuning_grid NAME VARIANT_FLAGS...: Fashion-MNIST, every delay, the tuning seed 3 only, into $out/NAME
tuning_grid() {
    local name="$1"
    shift
    python -m pcasgd.cli compare "${fmnist[@]}" "$@" --delays "${delays[@]}" --seeds 3 --out "$out/$name"
}

case "$grid" in
fmnist-options)
    # The predictor is named: the grid ran when extrapolate was the default, and reruns the same cells.
    python -m pcasgd.cli compare "${fmnist[@]}" \
        --variant "asgd=--mode asgd" --variant "pcasgd=--mode pcasgd --predictor extrapolate" \
        --variant "age-fresh 0.5=--mode pcasgd --predictor extrapolate --age-fresh 0.5" \
        --variant "age-max 8=--mode pcasgd --predictor extrapolate --age-max 8" \
        --variant "taylor=--mode pcasgd --predictor taylor" --variant "draft=--mode pcasgd --predictor draft" \
        --variant "pv=--mode pcasgd-pv --predictor extrapolate --pv-warmup-epochs 0.5" \
        --delays "${delays[@]}" --seeds 0 1 2 --out "$out/choices-fmnist"
    python -m pcasgd.cli compare "${fmnist[@]}" \
        --variant "taylor, age-fresh 2=--mode pcasgd --predictor taylor --age-fresh 2" \
        --delays "${delays[@]}" --seeds 0 1 2 --out "$out/choices-fmnist-2"
    python -m pcasgd.cli compare "${fmnist[@]}" \
        --variant "theta 0.25=--mode pcasgd --theta 0.25" --variant "theta 0.75=--mode pcasgd --theta 0.75" \
        --delays "${delays[@]}" --seeds 0 1 2 --out "$out/choices-fmnist-theta"
    ;;
fmnist-noniid)
    python -m pcasgd.cli compare "${fmnist[@]}" --partition dirichlet:0.1 --modes asgd pcasgd \
        --delays "${delays[@]}" --seeds 0 1 2 --out "$out/noniid-fmnist"
    ;;
cifar)
    for partition in iid dirichlet:0.1; do
        python -m pcasgd.cli compare "${cifar[@]}" --partition "$partition" --modes asgd pcasgd \
            --delays "${delays[@]}" --seeds 0 1 2 --out "$out/cifar-${partition/:/-}"
    done
    ;;
overlap-predictors)
    variants=(--variant "asgd=--mode asgd --overlap")
    for predictor in taylor momentum trajectory extrapolate draft; do
        variants+=(--variant "$predictor=--mode pcasgd --overlap --predictor $predictor")
    done
    tuning_grid overlap-predictors "${variants[@]}"
    ;;
overlap-options)
    predictor="${3:?usage: real_asynchrony.sh overlap-options OUT PREDICTOR}"
    base="--mode pcasgd --overlap --predictor $predictor"
    variants=()
    for option in "--age-fresh 1" "--age-fresh 4" "--age-max 4" "--age-max 8" "--theta 0.25" \
        "--theta 0.75" "--lam 0.5" "--lam 2"; do
        variants+=(--variant "${option#--}=$base $option")
    done
    tuning_grid "overlap-options-$predictor" "${variants[@]}"
    ;;
overlap-report)
    predictor="${3:?usage: real_asynchrony.sh overlap-report OUT PREDICTOR}"
    python -m pcasgd.cli compare "${fmnist[@]}" --variant "asgd=--mode asgd" \
        --variant "pcasgd=--mode pcasgd" --variant "asgd --overlap=--mode asgd --overlap" \
        --variant "pcasgd --overlap $predictor=--mode pcasgd --overlap --predictor $predictor" \
        --delays "${delays[@]}" --seeds 0 1 2 --out "$out/overlap-report-$predictor"
    ;;
*)
    echo "real_asynchrony.sh: unknown grid $grid (fmnist-options, fmnist-noniid, cifar, overlap-predictors, overlap-options, overlap-report)" >&2
    exit 2
    ;;
esac
