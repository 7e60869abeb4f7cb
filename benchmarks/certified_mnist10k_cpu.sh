#!/usr/bin/env bash
# Certified training on the 8k/2k real-MNIST subset, and the bracket on its robust accuracy.
#   bash benchmarks/certified_mnist10k_cpu.sh ROOT [PGD_WORKDIR]
# Data: $MNIST_DIR (default ../shared/data/mnist-10k). Rerunning resumes both steps.
#
# 1. ROOT/ibp: IBP training (Gowal et al. 2018) of their DM-small network (conv 16 4x4/2,
#    conv 32 4x4/1, FC 100: strided convolutions, no pooling, 330k parameters), about 10
#    minutes on 2 CPU cores: Adam 1e-3 (x0.1 at 8k and 10.5k steps), batch 100, 12k steps
#    (150 epochs of 8k digits), 800 steps of natural training, then train eps ramped
#    0 -> 0.4 over 4000 steps (Gowal et al. train at 0.4 to certify 0.3), kappa 1 -> 0.5.
# 2. ROOT/ibp/certify: clean, PGD-40, AutoAttack, IBP-, CROWN-IBP- and CROWN-certified
#    accuracy on the 2,000 test digits at eps 0.3, with the bracket check;
#    ROOT/ibp/certify_small_eps: IBP, CROWN-IBP and PGD-40 at 0.1 and 0.2 (AutoAttack and
#    CROWN take 15 and 10 minutes per eps here).
# 3. ROOT/ibp/eps_sweep: accuracy against eps on 500 digits (PGD-100, APGD-CE, Square-1000)
#    with the IBP- and CROWN-IBP-certified curves under them (eps_sweep_linf.png).
# 4. With PGD_WORKDIR (e.g. the model of benchmarks/mnist10k_cpu.sh): its certified
#    accuracy at eps 0.05, 0.1 and 0.3 (no AutoAttack: PGD-40 is the upper side there).
set -euo pipefail
root=${1:?usage: bash benchmarks/certified_mnist10k_cpu.sh ROOT [PGD_WORKDIR]}
pgd=${2:-}
here=$(cd "$(dirname "$0")/.." && pwd)
data_dir=${MNIST_DIR:-$here/../shared/data/mnist-10k}
export XLA_FLAGS="${XLA_FLAGS:-} --xla_cpu_experimental_ynn_fusion_type=dot"
cd "$here"
start=$(date +%s)
python -m experiments.mnist --workdir="$root/ibp" --data_dir="$data_dir" \
  --arch=dm_small --objective=ibp --eps=0.3 --train_eps=0.4 --eps_ramp_start=800 \
  --eps_ramp_steps=4000 --kappa_start=1 --kappa_end=0.5 --steps=12000 --batch_size=100 \
  --lr=1e-3 --lr_schedule=piecewise --lr_boundaries=8000,10500 --log_every=400 \
  --checkpoint_every=2000 --eval_examples=-1 --eval_attack_steps=40
echo "training: $(( $(date +%s) - start )) s"
python -m experiments.certify --workdir="$root/ibp" --data_dir="$data_dir" --eps=0.3
echo "training and certification at 0.3: $(( $(date +%s) - start )) s"
python -m experiments.certify --workdir="$root/ibp" --data_dir="$data_dir" --eps=0.1,0.2 \
  --methods=ibp,crown_ibp --attacks=pgd --output_dir="$root/ibp/certify_small_eps"
python -m experiments.eps_sweep --workdir="$root/ibp" --data_dir="$data_dir" --examples=500 \
  --attacks=pgd,apgd,square --num_queries=1000
echo "all steps for the IBP model: $(( $(date +%s) - start )) s"
if [[ -n "$pgd" ]]; then
  python -m experiments.certify --workdir="$pgd" --data_dir="$data_dir" --eps=0.05,0.1,0.3 \
    --attacks=pgd --output_dir="$root/pgd_certify"
fi
