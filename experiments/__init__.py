"""absl-flag entry points, one per dataset, table, figure and capacity sweep.

Planned (see ../shared/DESIGN.md and the issues): ``experiments.mnist``,
``experiments.mnist_capacity``, ``experiments.mnist_table``,
``experiments.cifar10``, ``experiments.cifar10_capacity``,
``experiments.cifar10_table``. Each module's docstring will give its exact
command, its cost and the numbers it should reach.
"""
