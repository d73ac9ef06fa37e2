"""The study's grid: which ensembles, methods and ground truths are computed, as entry-script steps, and their cost.

Each setting is a task and n per class. A *decomposition* setting trains three ensembles of the same
seeds (`cnn_<task>_<n>pc`, `..._init`, `..._batch`) and runs LOO (`scratch`), ATS, IF (LiSSA), GD and
GC on each. A *protocol* setting trains the paper's ensemble and adds the other ground truths and
solvers as *arms*: LOO `paper` and `paired`, IF by CG on the Gauss-Newton matrix. An arm is a root of
its own (`<root>/arms/<arm>/`) whose data/ and models/ are links to the study root's, so it scores
the very same checkpoints while its score files do not overwrite the main ones. An *LDS* setting adds the LDS
ground truth (`run_lds.py`) to the paper's ensemble after its methods.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..config import ExperimentConfig, get_task
from ..methods import outputs

BATCH_SIZE = ExperimentConfig.batch_size

#: the study's methods on every ensemble: script, its arguments, whether it is worth one process per core
MAIN_METHODS = (("run_loo.py", ("--protocol", "scratch"), True), ("run_ats.py", (), False), ("run_if.py", (), True),
                ("run_gd_and_gc.py", (), False))
#: arms: name -> (script, arguments, output, label in tables)
ARMS = {"loo_paper": ("run_loo.py", ("--protocol", "paper"), "loo", "LOO (paper)"),
        "loo_paired": ("run_loo.py", ("--protocol", "paired"), "loo", "LOO (paired)"),
        "if_cg_gn": ("run_if.py", ("--solver", "cg", "--hessian", "gauss-newton"), "if", "IF (CG, Gauss-Newton)")}
#: labels of the main root's outputs in the study's tables
MAIN_LABELS = {"loo": "LOO (scratch)", "ats": "ATS", "if": "IF (LiSSA)", "gd": "GD", "gc": "GC"}
#: a main output also shown on only the seeds of an arm that scores fewer (LiSSA on CG's seeds, the two solvers on
#: equal footing): (output, arm) -> the arm's name in that label
ON_ARM_SEEDS = {("if", "if_cg_gn"): "CG"}


def on_arm_seeds_label(output: str, arm: str) -> str:
    """The label of a main output restricted to the seeds an arm scored, e.g. "IF (LiSSA), CG's seeds"."""
    return f"{MAIN_LABELS[output]}, {ON_ARM_SEEDS[(output, arm)]}'s seeds"


#: every label the study's tables can hold -> the score output it shows (whose registered method gives its sign)
LABEL_OUTPUT = {**{lab: out for out, lab in MAIN_LABELS.items()}, **{a[3]: a[2] for a in ARMS.values()},
                **{on_arm_seeds_label(out, arm): out for out, arm in ON_ARM_SEEDS}}


def output_of(label: str) -> str:
    """The score output a table label shows ('loo', 'if', ...); a label the study does not know is a programming
    error (every label it builds must be in LABEL_OUTPUT)."""
    if label not in LABEL_OUTPUT:
        raise ValueError(f"the study has no label {label!r}: add it to LABEL_OUTPUT in tda/study/plan.py "
                         f"(known: {', '.join(LABEL_OUTPUT)})")
    return LABEL_OUTPUT[label]


def sign_of(label: str) -> int:
    """+1 where a positive score means "j helps i" (LOO, GD, GC), -1 for ATS and IF: the registered method's sign."""
    return outputs()[output_of(label)].sign


VARIANT_SUFFIX = {"both": "", "init": "_init", "batch": "_batch"}


@dataclass(frozen=True)
class Step:
    """One entry-script call: under which root, which script with which arguments; `what` names it (unique in a
    plan), `needs` the steps whose outputs it reads (a step is not run when one of them failed)."""

    what: str
    root: Path
    script: str
    args: tuple[str, ...]
    needs: tuple[str, ...] = ()

    @property
    def command(self) -> str:
        """The shell command that runs this step alone, from the repository."""
        return f"TDA_ROOT={self.root.resolve()} python {self.script} {' '.join(self.args)}"


@dataclass
class StudyPlan:
    """The grid of one study run and where it works and writes."""

    root: Path
    out: Path
    tasks: tuple[str, ...] = ("digits3", "fmnist3")
    protocol_ns: tuple[int, ...] = (10,)
    decomposition_ns: tuple[int, ...] = (20,)
    test_size: int = 15
    n_seeds: int = 10
    cg_seeds: int = 2
    lds_ns: tuple[int, ...] = (10, 20)
    lds_subsets: int = 50
    workers: int | None = None
    quick: bool = False
    model: str = "cnn"
    arms: tuple[str, ...] = field(default_factory=lambda: tuple(ARMS))
    command: str = ""  # how this study was started, for the report (default: `python run_study.py [--quick]`)

    def experiment(self, task: str, n: int, source: str = "both") -> str:
        """The experiment name of a setting's ensemble (`both` is the paper's: no suffix)."""
        return f"{self.model}_{task}_{n}pc{VARIANT_SUFFIX[source]}"

    def arm_root(self, arm: str) -> Path:
        """The root of one arm: links to the study root's data and models, its own scores and seeds."""
        return self.root / "arms" / arm

    @property
    def ns(self) -> list[int]:
        return sorted(set(self.protocol_ns) | set(self.decomposition_ns) | set(self.lds_ns))

    def sources(self, n: int) -> list[str]:
        """The ensembles trained at n per class."""
        return ["both", "init", "batch"] if n in self.decomposition_ns else ["both"]

    def steps(self) -> list[Step]:
        """Every entry-script call of the study, in order; each one skips what is already done."""
        w = () if self.workers is None else ("--workers", str(self.workers))
        one = ("--workers", "1")  # cheap steps: in this process, no worker start-up
        out: list[Step] = []
        for task in self.tasks:
            subsets = (f"subsets {task}",)
            out.append(Step(subsets[0], self.root, "run_subset_generation.py",
                            ("--task", task, "--num_per_class", *map(str, self.ns))))
            for n in self.ns:
                for source in self.sources(n):
                    e = self.experiment(task, n, source)
                    seeds, trained = ("--experiment", e, "--seed_id", "all"), (f"training {e}",)
                    out.append(Step(trained[0], self.root, "run_cnn_training.py", (*seeds, *one), subsets))
                    for script, extra, heavy in MAIN_METHODS:
                        out.append(Step(f"{script.removeprefix('run_').removesuffix('.py')} {e}", self.root,
                                        script, (*seeds, *(w if heavy else one), *extra), trained))
                    # the results steps take whichever methods' scores exist: a failed method leaves the others
                    out.append(Step(f"p-values {e}", self.root, "run_pvalues.py", ("--experiment", e), trained))
                    out.append(Step(f"correlations {e}", self.root, "run_correlations.py", ("--experiment", e),
                                    trained))
                    if source == "both" and n in self.lds_ns:  # after the methods: it also writes their LDS
                        out.append(Step(f"lds {e}", self.root, "run_lds.py",
                                        (*seeds, "--subsets", str(self.lds_subsets), *w), trained))
                if n in self.protocol_ns:
                    e = self.experiment(task, n)
                    for arm in self.arms:
                        script, extra, _, _ = ARMS[arm]
                        out.append(Step(f"{arm} {e}", self.arm_root(arm), script,
                                        ("--experiment", e, "--seed_id", "all", *w, *extra), (f"training {e}",)))
            for n in self.single_batch_ns(task):
                e = self.experiment(task, n, "batch")
                out.append(Step(f"training {e}", self.root, "run_cnn_training.py",
                                ("--experiment", e, "--seed_id", "all", *one), subsets))
        return out

    def single_batch_ns(self, task: str) -> list[int]:
        """n per class where an epoch is one batch: batch-order noise is exactly zero, so `_batch` is only trained,
        to check that its seeds give bitwise identical checkpoints."""
        classes = len(get_task(task, self.root).train_classes)
        return [n for n in self.ns if n * classes <= BATCH_SIZE and n not in self.decomposition_ns]

    def arm_seeds(self, arm: str) -> int:
        """How many of the study's seeds an arm scores (CG on the Gauss-Newton matrix is the dearest)."""
        return min(self.cg_seeds, self.n_seeds) if arm == "if_cg_gn" else self.n_seeds


def full_plan(root: Path, out: Path, workers: int | None = None) -> StudyPlan:
    """`make study`: digits3 and fmnist3; protocols at 10 per class, decomposition at 20; 10 seeds, 15 test samples."""
    return StudyPlan(root=root, out=out, workers=workers)


def quick_plan(root: Path, out: Path, workers: int | None = None) -> StudyPlan:
    """`--quick`: digits3 only, 4 seeds, 6 test samples, decomposition at 14 per class (two batches an epoch), CG on
    2 seeds, LDS at 10 per class on 20 subsets: every part of the study in minutes, its numbers a smoke test only."""
    return StudyPlan(root=root, out=out, tasks=("digits3",), decomposition_ns=(14,), test_size=6, n_seeds=4,
                     cg_seeds=2, lds_ns=(10,), lds_subsets=20, workers=workers, quick=True)


#: set to 1, it makes `--quick` tiny: for tests of the study's own command (`make study ARGS=--quick`), not for use
TINY_ENV = "TDA_STUDY_TINY"


def tiny_plan(root: Path, out: Path, workers: int | None = None) -> StudyPlan:
    """`--quick` under TDA_STUDY_TINY=1, for tests: every part of the study at 2 per class (one batch an epoch), 3
    seeds with CG on 2 of them (so LiSSA on CG's seeds too), LDS on 4 subsets, 3 test samples, in this process; its
    numbers mean nothing."""
    return StudyPlan(root=root, out=out, tasks=("digits3",), protocol_ns=(2,), decomposition_ns=(2,), test_size=3,
                     n_seeds=3, cg_seeds=2, lds_ns=(2,), lds_subsets=4, workers=1 if workers is None else workers,
                     quick=True)


#: CPU seconds per seed (5 checkpoints) of the 2-layer CNN at 10 per class (N = 30) and 30 test samples, measured
#: by `--quick` runs on a shared 2-core VM (load about 2); LOO and LiSSA grow with N^2, CG with N x min(N, M)
UNIT_COST = {"training": 0.8, "loo_scratch": 8.0, "loo_paper": 34.0, "loo_paired": 34.0, "ats": 1.2,
             "if_lissa": 5.0, "gd_gc": 1.2, "if_cg_gn": 330.0, "lds": 20.0}
# lds: 50 subsets; one run measured 26 CPU-s with the interpreter's start (LOO scratch 11 in the same session)


def cost_seconds(plan: StudyPlan, n: int, what: str) -> float:
    """Estimated CPU seconds of one step kind for all of its seeds at n per class."""
    scale = {"loo_scratch": 2, "loo_paper": 2, "loo_paired": 2, "if_lissa": 2, "if_cg_gn": 1}.get(what, 1)
    m_scale = min(plan.test_size, 3 * n) / 30 if what == "if_cg_gn" else plan.lds_subsets / 50 if what == "lds" else 1.0
    seeds = plan.arm_seeds(what) if what in ARMS else plan.n_seeds
    return UNIT_COST[what] * (n / 10) ** scale * m_scale * seeds


def cost_table(plan: StudyPlan) -> list[tuple[str, float]]:
    """(what, estimated CPU seconds) of every setting and arm of the plan, per task."""
    rows = []
    for n in plan.ns:
        per_ensemble = sum(cost_seconds(plan, n, w) for w in ("training", "loo_scratch", "ats", "if_lissa", "gd_gc"))
        rows.append((f"{n}pc: {len(plan.sources(n))} ensemble(s) x (training, LOO scratch, ATS, LiSSA, GD/GC)",
                     per_ensemble * len(plan.sources(n))))
        if n in plan.protocol_ns:
            rows += [(f"{n}pc: arm {a}", cost_seconds(plan, n, a)) for a in plan.arms]
        if n in plan.lds_ns:
            rows.append((f"{n}pc: LDS ground truth ({plan.lds_subsets} subsets)", cost_seconds(plan, n, "lds")))
    return [(f"{t}: {w}", s) for t in plan.tasks for w, s in rows]
