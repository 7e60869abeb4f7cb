#!/usr/bin/env bash
# The paper's figures on the 8k/2k real-MNIST subset, on a CPU (issue 10).
#   bash benchmarks/figures_mnist10k_cpu.sh ROOT
# Data: $MNIST_DIR (default ../shared/data/mnist-10k). Every step resumes or is redone
# quickly, so rerunning after an interruption is safe. About 90 minutes on 2 cores.
#   ROOT/pgd, ROOT/natural   the CPU recipe (benchmarks/mnist10k_cpu.sh), PGD and natural training
#   ROOT/capacity            widths 1, 2, 4, 8 x natural / FGSM / PGD training, shortened to
#                            3000 steps each (Madry: 100k steps, widths up to 16)
#   ROOT/pgd/loss_landscape  Figures 1-2: 10^4 restarts of PGD-100 on 5 test digits, both models
#   ROOT/pgd/eps_sweep       accuracy against L-inf and L2 eps, PGD-40, APGD-40 and Square with
#                            1000 queries, 500 test digits, both models
# The PNGs are copied to docs/figures/ (the README shows them).
set -euo pipefail
root=${1:?usage: bash benchmarks/figures_mnist10k_cpu.sh ROOT}
here=$(cd "$(dirname "$0")/.." && pwd)
data_dir=${MNIST_DIR:-$here/../shared/data/mnist-10k}
export XLA_FLAGS="${XLA_FLAGS:-} --xla_cpu_experimental_ynn_fusion_type=dot"
cd "$here"
bash benchmarks/mnist10k_cpu.sh "$root/pgd"
bash benchmarks/mnist10k_cpu.sh "$root/natural" --train_attack=none
python -m experiments.mnist_capacity --widths=1,2,4,8 --workdir="$root/capacity" \
  --data_dir="$data_dir" --lr=1e-3 --lr_schedule=cosine --batch_size=50 --eps=0.3 \
  --attack_steps=10 --attack_step_size=0.05 --eps_ramp_steps=1000 --augment_pad=2 \
  --steps=3000 --log_every=500 --checkpoint_every=1000 --eval_examples=-1 \
  --eval_attack_steps=40
python -m experiments.loss_landscape --workdir="$root/pgd" --natural_workdir="$root/natural" \
  --data_dir="$data_dir" --restarts=10000 --examples=5 --steps=100 --chunk_size=500
for norm in linf l2; do
  python -m experiments.eps_sweep --workdir="$root/pgd" --natural_workdir="$root/natural" \
    --data_dir="$data_dir" --norm=$norm --attacks=pgd,apgd,square --examples=500 \
    --num_steps=40 --num_queries=1000
done
mkdir -p docs/figures
cp "$root/capacity/capacity.png" docs/figures/mnist10k_capacity.png
cp "$root/pgd/loss_landscape/loss_trajectories.png" docs/figures/mnist10k_loss_trajectories.png
cp "$root/pgd/loss_landscape/loss_histograms.png" docs/figures/mnist10k_loss_histograms.png
cp "$root/pgd/eps_sweep/eps_sweep_linf.png" docs/figures/mnist10k_eps_sweep_linf.png
cp "$root/pgd/eps_sweep/eps_sweep_l2.png" docs/figures/mnist10k_eps_sweep_l2.png
