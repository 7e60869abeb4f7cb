#!/usr/bin/env bash
# CPU recipe for PGD adversarial training on the 8k/2k real-MNIST subset.
#   bash benchmarks/mnist10k_cpu.sh WORKDIR [extra experiments.mnist flags, e.g. --seed=1]
# Data: $MNIST_DIR (default ../shared/data/mnist-10k). Rerunning resumes.
# Differences from Madry's recipe (width 16, Adam 1e-4, PGD-40 of 0.01, 100k steps),
# chosen to fit about 15 minutes on 2 CPU cores:
#   width 8, Adam 1e-3 with cosine decay to 0, PGD-10 of step 0.05 for training, eps
#   ramped 0 -> 0.3 over the first 1000 steps (without a ramp this small model sits at
#   chance), random shifts of up to 2 pixels (curbs robust overfitting on 8k digits),
#   7000 steps.
# Evaluation is the paper's: eps 0.3, PGD-40 and PGD-100 of step 0.01, random start.
set -euo pipefail
workdir=${1:?usage: bash benchmarks/mnist10k_cpu.sh WORKDIR}
here=$(cd "$(dirname "$0")/.." && pwd)
data_dir=${MNIST_DIR:-$here/../shared/data/mnist-10k}
# Convolutions on XLA's multi-threaded Eigen kernels (see benchmarks/RESULTS.md).
export XLA_FLAGS="${XLA_FLAGS:-} --xla_cpu_experimental_ynn_fusion_type=dot"
cd "$here"
python -m experiments.mnist --workdir="$workdir" --data_dir="$data_dir" \
  --width=8 --lr=1e-3 --lr_schedule=cosine --batch_size=50 --train_attack=pgd --eps=0.3 \
  --attack_steps=10 --attack_step_size=0.05 --eps_ramp_steps=1000 --augment_pad=2 --steps=7000 \
  --log_every=250 --checkpoint_every=1000 --eval_examples=-1 --eval_attack_steps=40,100 "${@:2}"
