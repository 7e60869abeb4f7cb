#!/usr/bin/env bash
# Table 1 of Madry et al. on the 8k/2k real-MNIST subset, on CPU, sources included.
#   bash benchmarks/mnist10k_table_cpu.sh ROOT
# Trains (or resumes) into ROOT:
#   A       the CPU recipe of benchmarks/mnist10k_cpu.sh (PGD training, seed 0)
#   A_prime the same recipe with --seed=1 (the paper's A': an independent copy)
#   B       a naturally trained MnistCNN(4) (the paper's B: another, natural model)
# then evaluates A with experiments.mnist_table on the 2,000 test digits into ROOT/A/table.
# Data: $MNIST_DIR (default ../shared/data/mnist-10k).
set -euo pipefail
root=${1:?usage: bash benchmarks/mnist10k_table_cpu.sh ROOT}
here=$(cd "$(dirname "$0")/.." && pwd)
data_dir=${MNIST_DIR:-$here/../shared/data/mnist-10k}
bash "$here/benchmarks/mnist10k_cpu.sh" "$root/A"
bash "$here/benchmarks/mnist10k_cpu.sh" "$root/A_prime" --seed=1
export XLA_FLAGS="${XLA_FLAGS:-} --xla_cpu_experimental_ynn_fusion_type=dot"
cd "$here"
python -m experiments.mnist --workdir="$root/B" --data_dir="$data_dir" --width=4 \
  --train_attack=none --lr=1e-3 --batch_size=50 --steps=2000 --log_every=500 \
  --eval_examples=-1 --eval_attack_steps=40
python -m experiments.mnist_table --workdir="$root/A" --source_a_prime="$root/A_prime" \
  --source_b="$root/B" --data_dir="$data_dir"
