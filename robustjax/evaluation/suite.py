"""Attack suites: the paper's Tables 1 and 2 as data (Madry et al., Section 5).

A suite is a list of :class:`AttackSpec` rows (attack, norm, eps, steps, step
size, restarts, loss, kappa, targeting, source model). :func:`run_suite` runs
every row over a dataset through :func:`robustjax.evaluation.accuracy.robust_accuracy`, so
every adversarial example is validated (eps-ball within ``atol``, bounds, shape,
finite) before it is counted, and returns per-row accuracy and per-example
correctness plus the **worst case over all rows per example**: an example
counts as robust only if every attack fails on it. That is the number a
robustness claim must quote.

White-box rows (``source="A"``) attack the evaluated model with its own
gradients. Transfer (black-box) rows craft the examples on a source model
(``"A'"``: an independently trained copy; ``"B"`` / ``"A_nat"``: another or a
naturally trained model) and evaluate them on the target.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Mapping, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from robustjax import _checks
from robustjax.attacks import apgd
from robustjax.attacks import first_order as attacks
from robustjax.evaluation import autoattack
from robustjax.evaluation import accuracy as evaluate
from robustjax.evaluation import distances
from robustjax.attacks import fab
from robustjax.runtime import rowstore
from robustjax.attacks import square
from robustjax.evaluation.report import markdown_table, write_results  # noqa: F401
from robustjax.runtime import mesh as _mesh

__all__ = ["AttackSpec", "SuiteResult", "run_suite", "make_attack", "markdown_table",
           "write_results", "TARGETING", "ATTACKS"]

ATTACKS = ("natural", "fgsm", "pgd", "apgd", "apgd_t", "fab", "fab_t", "square", "autoattack",
           "fmn", "ddn", "cw_l2")
_MIN_NORM_ROWS = ("fmn", "ddn", "cw_l2")
TARGETING = ("none", "all", "random", "least_likely")
_AUTOATTACK_ROWS = ("apgd", "apgd_t", "fab", "fab_t", "square", "autoattack")
# Per attack: the default steps (Square: queries) and loss, and the losses it takes.
_DEFAULT_STEPS = dict(pgd=40, apgd=100, apgd_t=100, fab=100, fab_t=100, square=5000, fmn=100,
                      ddn=100, cw_l2=100)
_DEFAULT_LOSS = dict(natural="xent", fgsm="xent", pgd="xent", apgd="xent", apgd_t="dlr",
                     square="margin")
_LOSSES = dict(natural=attacks.LOSSES, fgsm=attacks.LOSSES, pgd=attacks.LOSSES,
               apgd=("xent", "dlr", "cw"), apgd_t=("xent", "dlr", "cw"),
               square=square.SQUARE_LOSSES)


@dataclasses.dataclass(frozen=True)
class AttackSpec:
    """One row of a robustness table (paper Tables 1 and 2, and AutoAttack's attacks).

    name: the "Method" column ("Natural", "FGSM", "PGD", "Targeted", "CW", "CW+",
      "APGD-CE", "AutoAttack", ...).
    attack: ``"natural"`` (clean inputs), ``"fgsm"``, ``"pgd"``; AutoAttack's
      ``"apgd"`` (:func:`robustjax.attacks.apgd.apgd`), ``"apgd_t"``
      (:func:`robustjax.attacks.apgd.apgd_t`), ``"fab"`` / ``"fab_t"``
      (:func:`robustjax.attacks.fab.fab`, untargeted / targeted), ``"square"``
      (:func:`robustjax.attacks.square.square`), ``"autoattack"`` (the ensemble,
      :func:`robustjax.evaluation.autoattack.autoattack`, white-box only), or a
      minimum-norm attack, ``"fmn"`` (L-inf, L2, L1), ``"ddn"`` or ``"cw_l2"`` (L2)
      (:mod:`robustjax.evaluation.distances`): its point counts where its norm is at
      most eps, as FAB's.
    norm, eps: the threat model (``"linf"``, ``"l2"`` or ``"l1"``; FGSM rows are L-inf).
    steps: iterations; Square: queries. Default (None): PGD 40, APGD, FAB, FMN, DDN
      100, CW-L2 100 per constant (9 constants), Square 5000; the ensemble uses its own
      (100 steps, 5000 queries).
    step_size, random_start: PGD's (FGSM: one step of eps); the other attacks
      choose their own steps.
    restarts: random restarts (PGD, APGD, FAB; Square and the ensemble: 1).
    loss, cw_kappa: the loss the attack ascends. Default (None): ``"xent"``;
      APGD-T ``"dlr"``; Square ``"margin"``. PGD and FGSM take ``"xent"`` or
      ``"cw"`` with confidence kappa (CW: 0, CW+: 50); APGD ``"xent"``,
      ``"dlr"`` or ``"cw"``; Square ``"margin"`` or ``"ce"``; FAB none.
    targeted: PGD only: ``"none"``; ``"all"`` (one PGD run towards every wrong
      class, the example is broken if any run fools the model: the paper's
      "targeted" row); ``"random"`` (one random wrong class); ``"least_likely"``
      (the class the source model scores lowest on the clean input).
    targets: APGD-T and FAB-T: the classes ranked 2 ... targets + 1 (AutoAttack: 9).
    version: the ensemble's version, ``"standard"`` or ``"plus"``.
    source: the model the examples are crafted on: ``"A"`` (white-box) or the
      name of a transfer source passed to :func:`run_suite`.
    """

    name: str
    attack: str = "pgd"
    norm: str = "linf"
    eps: float = 0.3
    steps: Optional[int] = None
    step_size: float = 0.01
    restarts: int = 1
    random_start: bool = True
    loss: Optional[str] = None
    cw_kappa: float = 0.0
    targeted: str = "none"
    targets: int = 9
    version: str = "standard"
    source: str = "A"

    def __post_init__(self):
        if self.steps is None:
            object.__setattr__(self, "steps", _DEFAULT_STEPS.get(self.attack))
        if self.loss is None:
            object.__setattr__(self, "loss", _DEFAULT_LOSS.get(self.attack))

    def validate(self) -> None:
        """Raises ValueError naming the first bad field."""
        _checks.check_choice("attack", self.attack, ATTACKS)
        _checks.check_choice("norm", self.norm, tuple(attacks.NORMS))
        if self.attack in _LOSSES:
            _checks.check_choice("loss", self.loss, _LOSSES[self.attack])
        elif self.loss is not None:
            raise ValueError(f"row {self.name!r}: {self.attack} takes no loss, "
                             f"got loss={self.loss!r}")
        _checks.check_choice("targeted", self.targeted, TARGETING)
        _checks.check_scalar("eps", self.eps)
        _checks.check_scalar("cw_kappa", self.cw_kappa)
        _checks.check_int("restarts", self.restarts, 1)
        if self.attack in _DEFAULT_STEPS or (self.attack == "autoattack"
                                             and self.steps is not None):
            _checks.check_int("steps", self.steps, 1)
        if self.attack == "pgd":
            _checks.check_scalar("step_size", self.step_size, positive=True)
        if self.targeted != "none" and self.attack != "pgd":
            raise ValueError(f"row {self.name!r}: targeted must be 'none' for {self.attack} "
                             f"rows (APGD-T and FAB-T choose their targets by rank)")
        if self.attack in ("apgd_t", "fab_t"):
            _checks.check_int("targets", self.targets, 1)
        if self.attack in _MIN_NORM_ROWS:
            _checks.check_choice("norm", self.norm, distances.MIN_NORM_ATTACKS[self.attack])
        if self.attack in ("square", "autoattack") + _MIN_NORM_ROWS and self.restarts != 1:
            raise ValueError(f"row {self.name!r}: restarts must be 1 for {self.attack} rows, "
                             f"got {self.restarts}")
        if self.attack == "autoattack":
            _checks.check_choice("version", self.version, ("standard", "plus"))
            if self.source != "A":
                raise ValueError(f"row {self.name!r}: the AutoAttack ensemble is white-box "
                                 f"(source 'A'), got source {self.source!r}")
        if not isinstance(self.source, str) or not self.source:
            raise ValueError(f"source must be a non-empty model name, got {self.source!r}")

    def row(self, accuracy: float) -> dict:
        """The results.json row (shared schema) for this spec."""
        natural = self.attack == "natural"
        if self.attack in _AUTOATTACK_ROWS + _MIN_NORM_ROWS:
            row = dict(name=self.name, attack=self.attack, norm=self.norm, eps=float(self.eps),
                       steps=None if self.steps is None else int(self.steps), step_size=None,
                       restarts=None if self.attack == "autoattack" else int(self.restarts),
                       loss=self.loss,
                       kappa=float(self.cw_kappa) if self.loss == "cw" else None,
                       targeted="ranked" if self.attack in ("apgd_t", "fab_t") else "none",
                       source=self.source, accuracy=float(accuracy))
            if self.attack in ("apgd_t", "fab_t"):
                row["targets"] = int(self.targets)
            if self.attack == "autoattack":
                row["version"] = self.version
            return row
        return dict(
            name=self.name, attack=self.attack, norm=self.norm,
            eps=0.0 if natural else float(self.eps),
            steps=0 if natural else (1 if self.attack == "fgsm" else int(self.steps)),
            step_size=0.0 if natural else float(
                self.eps if self.attack == "fgsm" else self.step_size),
            restarts=int(self.restarts) if self.attack == "pgd" else 1,
            loss=None if natural else self.loss,
            kappa=float(self.cw_kappa) if self.loss == "cw" and not natural else None,
            targeted=self.targeted, source=self.source, accuracy=float(accuracy))


class SuiteResult(NamedTuple):
    """Output of :func:`run_suite`.

    rows: one dict per spec (shared results.json schema) and a last row with
      ``attack="worst_case"``.
    correct: bool ``[num_rows, N]`` per-example robust correctness of each spec.
    worst_case_correct: bool ``[N]``, True where the example is correct under every
      row (every attack failed on it).
    """

    rows: list
    correct: np.ndarray
    worst_case_correct: np.ndarray

    @property
    def worst_case_accuracy(self) -> float:
        return float(self.worst_case_correct.mean())


def _targets(spec: AttackSpec, src_logits, x, y, key, num_classes):
    """Target classes for the single-target modes."""
    if spec.targeted == "random":
        return (y + jax.random.randint(key, y.shape, 1, num_classes)) % num_classes
    # Least likely; it is y only where the source already ranks y last.
    return jnp.argmin(src_logits(x), axis=-1)


def make_attack(spec: AttackSpec, src_logits, target_logits,
                num_classes: int) -> Optional[evaluate.AttackFn]:
    """``attack(x, y, key) -> x_adv`` for ``spec``: crafted on ``src_logits``.

    ``target_logits`` (the evaluated model) is used only by ``targeted="all"``
    to keep, per example, a run that fools it (as restarts keep the best run).
    """
    spec.validate()
    if spec.attack == "natural":
        return None
    if spec.attack == "autoattack":
        raise ValueError(f"row {spec.name!r}: the ensemble is not a per-batch attack; "
                         "run_suite runs it through robustjax.evaluation.autoattack.autoattack")
    if spec.attack == "fgsm":
        if spec.targeted != "none" or spec.norm != "linf":
            raise ValueError(f"row {spec.name!r}: FGSM rows are untargeted L-inf "
                             f"(got targeted={spec.targeted!r}, norm={spec.norm!r})")
        return lambda x, y, key: attacks.fgsm(src_logits, x, y, eps=spec.eps, loss=spec.loss,
                                              cw_kappa=spec.cw_kappa)
    common = dict(eps=spec.eps, norm=spec.norm)
    if spec.attack in ("apgd", "apgd_t"):
        loss = "ce" if spec.loss == "xent" else spec.loss
        if spec.attack == "apgd":
            return lambda x, y, key: apgd.apgd(src_logits, x, y, key, loss=loss,
                                               num_steps=spec.steps, restarts=spec.restarts,
                                               cw_kappa=spec.cw_kappa, **common)
        return lambda x, y, key: apgd.apgd_t(src_logits, x, y, key, loss=loss,
                                             num_targets=spec.targets, num_steps=spec.steps,
                                             restarts=spec.restarts, **common)
    if spec.attack in ("fab", "fab_t"):
        return lambda x, y, key: fab.fab(src_logits, x, y, key, targeted=spec.attack == "fab_t",
                                         num_targets=spec.targets, num_steps=spec.steps,
                                         restarts=spec.restarts, **common)
    if spec.attack in _MIN_NORM_ROWS:
        run = distances.min_norm_attack(spec.attack, src_logits, norm=spec.norm, steps=spec.steps)

        def within_eps(x, y, key):
            res = run(x, y, key)
            ok = (res.norms <= spec.eps).reshape((x.shape[0],) + (1,) * (x.ndim - 1))
            return jnp.where(ok, res.x_adv, x)
        return within_eps
    if spec.attack == "square":
        return lambda x, y, key: square.square(src_logits, x, y, key, num_queries=spec.steps,
                                               loss=spec.loss, **common)
    pgd = functools.partial(attacks.pgd, src_logits, eps=spec.eps, step_size=spec.step_size,
                            num_steps=spec.steps, norm=spec.norm, loss=spec.loss,
                            cw_kappa=spec.cw_kappa, random_start=spec.random_start,
                            restarts=spec.restarts)
    if spec.targeted == "none":
        return lambda x, y, key: pgd(x, y, key)
    if spec.targeted in ("random", "least_likely"):
        def single(x, y, key):
            tkey, akey = jax.random.split(key)
            t = _targets(spec, src_logits, x, y, tkey, num_classes)
            return pgd(x, t, akey, targeted=True)
        return single

    def every_target(x, y, key):
        offsets = jnp.arange(1, num_classes)
        keys = jax.random.split(key, num_classes - 1)
        runs = jax.vmap(lambda o, k: pgd(x, (y + o) % num_classes, k, targeted=True))(
            offsets, keys)  # [K-1, B, ...]
        # Broken if any target run is misclassified by the evaluated model.
        return attacks.select_best_restart(target_logits, runs, y)
    return every_target


def run_suite(logits_fn, x, y, specs: Sequence[AttackSpec], *,
              sources: Optional[Mapping[str, attacks.LogitsFn]] = None,
              batch_size: int = 200, key: Optional[jax.Array] = None,
              bounds=(0.0, 1.0), atol: float = 1e-5,
              save_dir: Optional[str] = None, resume_dir: Optional[str] = None,
              progress=None, mesh=None) -> SuiteResult:
    """Runs every row of a table (paper Tables 1 and 2) and the per-example worst case.

    Args:
      logits_fn: the evaluated model ``x -> logits`` (source ``"A"``).
      x, y: the dataset (inputs in ``bounds``, int labels).
      specs: the rows; row ``i`` uses the key ``jax.random.fold_in(key, i)``.
      sources: transfer source models by name (``{"A'": ..., "B": ...}``).
      batch_size: inputs per attack call. Restarts and targets are vmapped into
        the batch, so a row with R restarts (or one run per wrong class) takes
        ``batch_size // R`` examples per call: memory and speed per call stay
        those of a plain row (on CPU a 20x larger batch ran 20% slower).
      bounds, atol: as in :func:`robustjax.evaluation.accuracy.robust_accuracy`.
      save_dir: if given, the validated adversarial examples of row ``i`` are
        saved as ``save_dir/row{i:02d}.npy``.
      resume_dir: if given, each finished row is stored there
        (:mod:`robustjax.runtime.rowstore`) and a rerun with the same settings, data
        and models loads it instead of running it again: an interrupted table
        resumes, with the same result as an uninterrupted run.
      progress: optional ``callback(i, spec, accuracy)`` after each row.
      mesh: the devices every row's batches are split over
        (:func:`robustjax.runtime.mesh.make_mesh`; default: every device of every
        process). Every process computes every row; only process 0 writes
        ``save_dir`` and ``resume_dir``.

    The worst-case row uses the largest eps among the attack rows, and its
    accuracy is the fraction of examples that every row leaves correct.
    """
    if not specs:
        raise ValueError("specs must hold at least one AttackSpec")
    sources = dict(sources or {})
    if "A" in sources:
        raise ValueError("sources must not redefine 'A' (the evaluated model)")
    models = dict(sources, A=logits_fn)
    for s in specs:
        if not isinstance(s, AttackSpec):
            raise ValueError(f"specs must hold AttackSpec rows, got {s!r}")
        s.validate()
        if s.source not in models:
            raise ValueError(f"row {s.name!r}: unknown source {s.source!r}; "
                             f"expected one of {sorted(models)}")
    num_classes = jax.eval_shape(
        logits_fn, jax.ShapeDtypeStruct((1,) + np.shape(x)[1:], jnp.float32)).shape[-1]
    key = jax.random.PRNGKey(0) if key is None else key
    primary = _mesh.is_primary()
    if save_dir and primary:
        os.makedirs(save_dir, exist_ok=True)
    if resume_dir:
        x_np, y_np = np.asarray(x), np.asarray(y)
        ids = dict(data=rowstore.data_fingerprint(x_np, y_np),
                   models={k: rowstore.model_fingerprint(f, x_np) for k, f in models.items()})
    rows, correct = [], []
    for i, spec in enumerate(specs):
        if resume_dir:
            fp = rowstore.fingerprint(spec, i, jax.random.fold_in(key, i), **ids,
                                      batch_size=batch_size, bounds=list(bounds), atol=atol)
            stored = rowstore.load(resume_dir, i, fp)
            if stored is not None:
                rows.append(stored[0])
                correct.append(stored[1])
                if progress is not None:
                    progress(i, spec, stored[0]["accuracy"])
                continue
        if spec.attack == "autoattack":
            steps = {} if spec.steps is None else dict(num_steps=spec.steps)
            stages = os.path.join(resume_dir, f"row{i:02d}_stages") if resume_dir else None
            aa = autoattack.autoattack(logits_fn, x, y, jax.random.fold_in(key, i), eps=spec.eps,
                                       norm=spec.norm, version=spec.version,
                                       batch_size=batch_size, bounds=bounds, atol=atol,
                                       resume_dir=stages, mesh=mesh, **steps)
            res = evaluate.RobustAccuracy(aa.robust_accuracy, aa.correct, aa.clean_accuracy,
                                          aa.clean_correct, aa.x_adv)
            row = dict(spec.row(aa.robust_accuracy), after=aa.accuracy_after,
                       seconds=aa.seconds, warnings=aa.warnings)
        else:
            attack = make_attack(spec, models[spec.source], logits_fn, num_classes)
            fanout = (spec.restarts if spec.attack == "pgd" else 1) * (
                num_classes - 1 if spec.targeted == "all" else 1) * (
                num_classes if spec.attack == "fab" else 1)  # FAB: a Jacobian per step
            res = evaluate.robust_accuracy(logits_fn, x, y, attack, eps=spec.eps,
                                           norm=spec.norm,
                                           batch_size=max(1, batch_size // fanout),
                                           key=jax.random.fold_in(key, i),
                                           bounds=bounds, atol=atol,
                                           keep_adversarial=bool(save_dir), mesh=mesh)
            row = spec.row(res.accuracy)
        if save_dir and primary:
            np.save(os.path.join(save_dir, f"row{i:02d}.npy"), res.x_adv)
        rows.append(row)
        correct.append(res.correct)
        if resume_dir and primary:
            rowstore.save(resume_dir, i, fp, row, res.correct)
        if progress is not None:
            progress(i, spec, res.accuracy)
    correct = np.stack(correct)
    worst = np.all(correct, axis=0)
    attack_specs = [s for s in specs if s.attack != "natural"] or list(specs)
    rows.append(dict(name="Worst case", attack="worst_case", norm=attack_specs[0].norm,
                     eps=float(max(s.eps for s in attack_specs)), steps=None,
                     step_size=None, restarts=None, loss=None, kappa=None, targeted=None,
                     source="all", accuracy=float(worst.mean())))
    return SuiteResult(rows=rows, correct=correct, worst_case_correct=worst)
