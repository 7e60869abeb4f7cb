#!/usr/bin/env bash
# Randomized smoothing on the 8k/2k real-MNIST subset (Cohen et al. 2019), CPU recipe.
#   bash benchmarks/smoothing_mnist10k_cpu.sh OUT [EXAMPLES] [N]
# Trains MnistCNN(4) with Gaussian noise augmentation at sigma 0.25 and 0.5 (Adam 1e-3,
# cosine decay, batch 50, 6000 steps: about 37 epochs of the 8k digits), then certifies the
# first EXAMPLES test digits (default 100) with n0 = 100, n = N (default 100000), alpha 0.001,
# with the empirical points of APGD-CE + APGD-T (50 steps, 4 noise draws) on the smoothed
# classifier at L2 0.5 and 1.0. Rerunning resumes both the training and the certification.
# On a 2-core AMD EPYC (Zen 3): training about 2 minutes per model, certification about 11 s
# per digit at n = 100000.
# Data: $MNIST_DIR (default ../shared/data/mnist-10k).
set -euo pipefail
out=${1:?usage: bash benchmarks/smoothing_mnist10k_cpu.sh OUT [EXAMPLES] [N]}
examples=${2:-100}
n=${3:-100000}
here=$(cd "$(dirname "$0")/.." && pwd)
data_dir=${MNIST_DIR:-$here/../shared/data/mnist-10k}
export XLA_FLAGS="${XLA_FLAGS:-} --xla_cpu_experimental_ynn_fusion_type=dot"
cd "$here"
for sigma in 0.25 0.5; do
  python -m experiments.mnist --workdir="$out/gaussian_$sigma" --data_dir="$data_dir" \
    --width=4 --lr=1e-3 --lr_schedule=cosine --batch_size=50 --objective=gaussian \
    --noise_sigma="$sigma" --train_norm=l2 --eps=1.0 --steps=6000 --log_every=500 \
    --checkpoint_every=1000 --eval_examples=500 --eval_attack_steps=40
  python -m experiments.smoothing --workdir="$out/gaussian_$sigma" --sigma="$sigma" \
    --n0=100 --n="$n" --alpha=0.001 --examples="$examples" --aa_radii=0,0.5,1.0 \
    --aa_steps=50 --aa_samples=4 --aa_n=1000
done
