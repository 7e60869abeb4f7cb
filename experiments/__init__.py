"""absl-flag entry points, one per dataset, table, figure and capacity sweep.

``experiments.mnist``, ``experiments.mnist_capacity``, ``experiments.mnist_table``,
``experiments.cifar10``, ``experiments.cifar10_capacity``,
``experiments.cifar10_table`` and ``experiments.autoattack``. Each module's
docstring gives its exact command, its cost and the numbers it should reach.
"""
