#!/usr/bin/env bash
# Natural, Madry PGD-10, TRADES (beta 6) and Fast AT on full Fashion-MNIST, on a CPU (issue 14).
#   bash benchmarks/compare_training_fashion_cpu.sh ROOT [more flags]
# Data: $FASHION_DIR (default /usr/share/datasets/fashion-mnist, Debian's
# dataset-fashion-mnist package: the official 60k/10k IDX files). Rerunning resumes.
# The recipe is experiments.compare_training's defaults: MnistCNN(2), L-inf eps 0.1,
# Adam 1e-3, batch 128, 4000 steps (about 8.7 epochs of the 59k training images),
# PGD-10 of 0.025 (Madry and TRADES), EMA 0.995, validation on 1000 held-out training
# images every 500 steps; evaluation on the first 1000 test images.
# The PNGs are copied to docs/figures/ (the README shows them).
set -euo pipefail
root=${1:?usage: bash benchmarks/compare_training_fashion_cpu.sh ROOT [flags]}
shift
here=$(cd "$(dirname "$0")/.." && pwd)
data_dir=${FASHION_DIR:-/usr/share/datasets/fashion-mnist}
export XLA_FLAGS="${XLA_FLAGS:-} --xla_cpu_experimental_ynn_fusion_type=dot"
cd "$here"
python -m experiments.compare_training --data_dir="$data_dir" --root="$root" "$@"
mkdir -p docs/figures
cp "$root/validation.png" docs/figures/fashion_compare_validation.png
cp "$root/clean_vs_autoattack.png" docs/figures/fashion_compare_clean_vs_autoattack.png
