#!/usr/bin/env bash
# Install the datasets the tests train on that no pip package ships: Fashion-MNIST from Debian's
# dataset-fashion-mnist (IDX files in /usr/share/datasets/fashion-mnist). Idempotent; needs root
# (or passwordless sudo) and apt. CIFAR-10 comes from ../shared/data, MNIST is not used by tests.
set -euo pipefail
target=/usr/share/datasets/fashion-mnist
if [ -f "$target/train-images-idx3-ubyte.gz" ]; then
  exit 0
fi
sudo=""
if [ "$(id -u)" != 0 ]; then sudo="sudo -n"; fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get install -y -q dataset-fashion-mnist >/dev/null || {
  $sudo apt-get update -q >/dev/null
  $sudo apt-get install -y -q dataset-fashion-mnist >/dev/null
}
test -f "$target/train-images-idx3-ubyte.gz"
echo "pcasgd: Fashion-MNIST installed in $target" >&2
