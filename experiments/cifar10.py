r"""CIFAR-10 adversarial training and evaluation (Madry et al., Section 4 and Table 2).

Madry's cifar10_challenge recipe, as the paper ran it: CifarResNet(10)
(WRN-34-10, 45.9M parameters), PGD-7 of step 2/255 with a random start at
eps = 8/255, momentum SGD (0.9) with lr 0.1 -> 0.01 at 40k -> 0.001 at 60k,
80k steps of batch 128, weight decay 2e-4 on kernels, 4-pixel pad, random
crop and flip on the device. The attack sees batch norm in eval mode
(--bn_attack_mode). Evaluates natural, FGSM, PGD-7 and PGD-20 (step 2/255)
accuracy on the test split; writes config.json, metrics.jsonl, checkpoints and
results.json to --workdir, prints a markdown table; rerunning resumes.

  python -m experiments.cifar10 --workdir=workdirs/cifar10_wrn --data_dir=DIR

DIR holds cifar-10-python.tar.gz (or cifar-10-binary.tar.gz, or either
extracted), from https://www.cs.toronto.edu/~kriz/cifar.html; without
--data_dir TFDS is used (it must already have prepared cifar10). Multi-device:
the batch is sharded over all local devices automatically; several hosts:
add --distributed. --compute_dtype=bfloat16 for mixed precision.

Paper, Table 2 (wide model): natural 87.3%, FGSM 56.1%, PGD-7 50.0%,
PGD-20 45.8%, CW-30 46.8% (use experiments.cifar10_table for its rows).
Cost: 80k steps x 8 forward-backward passes of WRN-34-10 on 128 images;
about 2 h on one H100 in bfloat16 at the throughput target of
benchmarks/train_throughput.py (not measured here: no GPU was available).
Width 1 (--width=1, "simple", 0.46M parameters) is about 25x cheaper.
"""

from absl import app

from experiments.cli import one_line_errors
from experiments import common
from robustjax.training import train_and_evaluate

CIFAR_DEFAULTS = dict(dataset="cifar10", width=10, eps=8 / 255, attack_steps=7,
                      attack_step_size=2 / 255, optimizer="momentum", lr=0.1,
                      lr_schedule="piecewise", lr_boundaries=["40000", "60000"],
                      weight_decay=2e-4, batch_size=128, steps=80_000, augment_pad=4,
                      augment_flip=True, eval_attack_steps=["7", "20"],
                      eval_attack_step_size=2 / 255, eval_batch_size=200)


@one_line_errors
def main(argv):
    workdir = common.start(argv, datasets=("cifar10",))
    train_and_evaluate(common.config_from_flags(), workdir)


if __name__ == "__main__":
    common.set_defaults(**CIFAR_DEFAULTS)
    app.run(main)
