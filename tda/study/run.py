"""`python run_study.py [--quick]`: run the study's steps (entry scripts under its own root), then its tables,
figures, the summary across its experiments and results/study/report.md."""
from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from .. import cli, provenance
from ..config import TDAError, repo_root
from ..ranges import POSITIVE_INT, Range, ranged
from ..results.outputs import Outputs, write_figure
from ..results.summary import write_summary
from ..lds.evaluate import lds_figure
from . import analysis, figures, ground_report, ground_truth, report
from .plan import TINY_ENV, StudyPlan, cost_table, full_plan, quick_plan, tiny_plan
from .workspace import Failure, caught, checkpoints_identical, prepare, run_step

MANIFEST = ".study_manifest.json"


def run_steps(plan: StudyPlan, log=print) -> tuple[pd.DataFrame, list[Failure]]:
    """Prepare the root, then run every step in order (each skips finished work): their wall times, and what failed.

    A failed step does not stop the study: the steps that need its outputs are not run, every other one is.
    """
    prepare(plan, log)
    rows, failures, broken = [], [], set()
    bar = tqdm(plan.steps(), desc="study", unit="step")
    for step in bar:
        bar.set_postfix_str(step.what)
        blocked = [n for n in step.needs if n in broken]
        if blocked:
            seconds, error, status = 0.0, f"not run: it needs '{blocked[0]}', which failed", "not run"
        else:
            seconds, error = run_step(step, plan.out / "study.log")
            status = "failed" if error else "done"
        if error:
            broken.add(step.what)
            failures.append(Failure(step.what, error, step.command))
        rows.append({"step": step.what, "root": str(step.root), "script": step.script, "seconds": round(seconds, 1),
                     "status": status, "error": error or ""})
        tqdm.write(f"{step.what}: {status.upper()}: {error}" if error else f"{step.what}: {seconds:.0f} s")
    return pd.DataFrame(rows), failures


def bitwise_table(plan: StudyPlan) -> pd.DataFrame:
    """The `_batch` ensembles: whether their seeds' checkpoints are bitwise identical (one batch per epoch)."""
    rows = []
    for task in plan.tasks:
        for n in plan.ns:
            if n in plan.single_batch_ns(task) or n in plan.decomposition_ns:
                e = plan.experiment(task, n, "batch")
                try:
                    row = checkpoints_identical(plan.root, e)
                    rows.append({**row, "single_batch": n in plan.single_batch_ns(task)})
                except TDAError:
                    continue
    return pd.DataFrame(rows)


def analysis_command(plan: StudyPlan) -> str:
    """The command that rewrites the tables, figures and report from the scores there are."""
    cmd = plan.command or ("python run_study.py" + (" --quick" if plan.quick else ""))
    return cmd if "--analysis_only" in cmd.split() else f"{cmd} --analysis_only"


def write_outputs(plan: StudyPlan, timings: pd.DataFrame, total_s: float, failures: list[Failure] = (),
                  log=print) -> tuple[Path, list[Failure]]:
    """Every table with its figure, the summary across experiments, and report.md, into plan.out; with the failed
    steps, and any part of the analysis that fails here, named in the report (the rest is written all the same)."""
    failures = list(failures)
    log_file = plan.out / "study.log"

    def attempt(what: str, make, default=None):
        try:
            return make()
        except Exception as e:  # noqa: BLE001 - one broken table or figure must not lose the rest of the report
            failures.append(Failure(what, caught(e, log_file), analysis_command(plan)))
            return default

    loaded = analysis.load_all(plan)
    truths = attempt("LDS outcomes", lambda: ground_truth.load_truths(plan, loaded), {})
    fp = provenance.digest(sorted(str(p) for p in loaded.files)) if loaded.files else "none"
    fp = [fp, [provenance.file_digest(p) for p in sorted(loaded.files)]]
    out = Outputs(plan.out, MANIFEST, overwrite=True)
    empty = pd.DataFrame()
    dec = attempt("decomposition table", lambda: analysis.decomposition_table(plan, loaded), empty)
    var = attempt("variants table", lambda: analysis.variants_table(plan, loaded), empty)
    prot = attempt("protocols table", lambda: analysis.protocols_table(plan, loaded), empty)
    agree = attempt("agreement table", lambda: analysis.agreement_table(plan, loaded), empty)
    cg = attempt("CG table", lambda: analysis.cg_table(plan), empty)
    bits = attempt("bitwise table", lambda: bitwise_table(plan), empty)
    lds, lds_per = attempt("LDS table", lambda: ground_truth.lds_study_table(loaded, truths), (empty, empty))
    gain = attempt("LDS gain table", lambda: ground_truth.posterior_gain(lds_per), empty)
    adv = attempt("advice table", lambda: ground_truth.advice_table(loaded, truths), empty)
    trend = attempt("significance trend table", lambda: ground_truth.trend_table(plan, loaded), empty)
    for name, table in (("decomposition", dec), ("variants", var), ("protocols", prot), ("agreement", agree),
                        ("cg", cg), ("bitwise", bits), ("lds", lds), ("lds_per_test", lds_per), ("lds_gain", gain),
                        ("advice", adv), ("significance_trend", trend), ("timings", timings)):
        out.write(f"{name}.csv", table.to_csv(index=False, float_format="%.6g"), fp)
    var_dec = var[var.groupby(["task", "n"])["source"].transform("nunique") > 1] if not var.empty else var
    for name, table, make in (
            ("decomposition", dec, lambda: figures.decomposition_figure(dec)),
            ("variants", var_dec, lambda: figures.significance_figure(
                var_dec, "method", "source", "Which source varies with the seed: mean p-value and significant pairs "
                "(K = 5)")),
            ("protocols", prot, lambda: figures.significance_figure(
                prot, "arm", None, "Ground truths and IF solvers on the same ensembles (K = 5)")),
            ("agreement", agree, lambda: figures.agreement_figure(agree)),
            ("lds", lds, lambda: lds_figure(lds.assign(setting=ground_report.setting(lds)), "LDS of every method "
                                            "(outcome: the seeds' mean; 90% intervals over test samples)", "setting")),
            ("advice", adv, lambda: ground_report.advice_figure(adv)),
            ("significance_trend", trend, lambda: ground_report.trend_figure(trend))):
        if not table.empty:
            attempt(f"{name} figure", lambda: write_figure(out, name, make(), fp))
    experiments = [plan.experiment(t, n, s) for t in plan.tasks for n in plan.ns for s in plan.sources(n)]
    have = [e for e in experiments if (plan.root / "results" / e / "significance.csv").exists()]
    if have:
        attempt("summary across experiments", lambda: write_summary(have, plan.root, plan.out / "summary",
                                                                    log=lambda line: None))
    big = StudyPlan(root=plan.root, out=plan.out, protocol_ns=(10, 20, 50), decomposition_ns=(20, 50), test_size=30)
    grid = (f"the full grid ({' and '.join(big.tasks)} at 10, 20 and 50 per class, the decomposition at 20 and 50, "
            f"every arm at every n, {big.n_seeds} seeds, {big.test_size} test samples)")
    per_task = [(w.split(": ", 1)[1], c) for w, c in cost_table(big) if w.startswith(f"{big.tasks[0]}:")]
    sections = [attempt(f"report section: {what}", make, "") for what, make in (
        ("decomposition", lambda: report.decomposition_section(plan, dec)),
        ("bitwise check", lambda: report.bitwise_section(plan, bits)), ("variants", lambda: report.variants_section(var)),
        ("protocols", lambda: report.protocols_section(plan, prot, agree, cg)),
        ("agreement", lambda: report.agreement_section(agree)),
        ("LDS", lambda: ground_report.lds_section(plan, lds, gain)),
        ("advice", lambda: ground_report.advice_section(plan, adv, trend, report.command(plan))),
        ("footer", lambda: report.footer(plan, per_task, len(big.tasks), grid, loaded.missing)))]
    text = (report.header(plan, timings, total_s) + report.failures_section(failures, analysis_command(plan))
            + "".join(sections))
    path = out.write("report.md", text, fp)
    log(f"wrote {len(out.written)} files to {plan.out}/ ({len(out.kept)} unchanged); report: {path}")
    return path, failures


def main(argv: list[str] | None = None) -> Path:
    """Run the study (or only its analysis) and write results/study/report.md."""
    p = cli.parser("The noise decomposition (init vs batch order), LOO protocols, IF solvers, the LDS and the paper's "
                   "advice on the offline tasks, as one command; see docs/study.md.")
    p.add_argument("--quick", action="store_true", help="digits3 only, 4 seeds, 6 test samples, decomposition at 14 per "
                   "class, LDS at 10 on 20 subsets: a smoke test of about 10 CPU-min (for tests only, "
                   f"{TINY_ENV}=1 shrinks it to a tiny grid)")
    p.add_argument("--root", default=None, help="the study's own TDA_ROOT (default: <out>/work)")
    p.add_argument("--out", default=None, help="where the report goes (default: results/study[/quick])")
    p.add_argument("--workers", type=ranged(int, POSITIVE_INT), default=None, help="seeds in parallel per step (default: one per core)")
    p.add_argument("--tasks", nargs="+", default=None, help="tasks (default: digits3 fmnist3; --quick: digits3)")
    p.add_argument("--protocol_n", nargs="+", type=ranged(int, POSITIVE_INT), default=None, help="n per class where LOO protocols and IF "
                   "solvers are compared (default: 10)")
    p.add_argument("--decomposition_n", nargs="+", type=ranged(int, POSITIVE_INT), default=None,
                   help="n per class of the noise decomposition (default: 20; add 50 if time allows)")
    p.add_argument("--lds_n", nargs="*", type=ranged(int, POSITIVE_INT), default=None,
                   help="n per class of the LDS ground truth and the advice analysis (default: 10 20; --quick: 10; "
                        "none: no LDS)")
    p.add_argument("--lds_subsets", type=ranged(int, Range(ge=3)), default=None,
                   help="random subsets of the LDS (default 50, --quick 20)")
    p.add_argument("--seeds", type=ranged(int, Range(ge=2)), default=None, help="seeds per ensemble (default 10, --quick 4)")
    p.add_argument("--test_size", type=ranged(int, POSITIVE_INT), default=None, help="test samples per task (default 15, --quick 6)")
    p.add_argument("--analysis_only", action="store_true", help="only rewrite the tables, figures and report")
    p.add_argument("--dry_run", action="store_true", help="print the steps and the estimated cost, run nothing")
    args = p.parse_args(argv)
    base = repo_root()
    out = Path(args.out) if args.out else base / "results" / ("study/quick" if args.quick else "study")
    root = Path(args.root) if args.root else out / "work"
    tiny = args.quick and os.environ.get(TINY_ENV) == "1"
    plan = (tiny_plan if tiny else quick_plan if args.quick else full_plan)(root, out, args.workers)
    given = [a for a in (sys.argv[1:] if argv is None else argv) if a not in ("--analysis_only", "--dry_run")]
    plan.command = (f"{TINY_ENV}=1 " if tiny else "") + shlex.join(["python", "run_study.py", *given])
    options = (("tasks", args.tasks), ("protocol_ns", args.protocol_n), ("decomposition_ns", args.decomposition_n),
             ("n_seeds", args.seeds), ("test_size", args.test_size), ("lds_ns", args.lds_n),
             ("lds_subsets", args.lds_subsets))
    for name, value in options:
        if value is not None:
            setattr(plan, name, tuple(value) if isinstance(value, list) else value)
    if plan.n_seeds < 2 or plan.test_size < 1 or (args.workers is not None and args.workers < 1):
        raise TDAError("--seeds must be >= 2, --test_size and --workers >= 1")
    if args.dry_run:
        for s in plan.steps():
            print(s.command)
        for w, sec in cost_table(plan):
            print(f"estimated {w}: {sec / 60:.1f} CPU-min")
        return out / "report.md"
    t0 = time.perf_counter()
    if args.analysis_only:  # the steps' times of the run that computed them, if there was one
        done = plan.out / "timings.csv"
        timings = pd.read_csv(done) if done.exists() else pd.DataFrame(columns=["step", "root", "script", "seconds"])
        t0 -= float(timings["seconds"].sum())
        failures = []
    else:
        timings, failures = run_steps(plan)
    path, failures = write_outputs(plan, timings, time.perf_counter() - t0, failures)
    print(f"study done in {(time.perf_counter() - t0) / 60:.1f} min: {path}")
    if failures:
        raise TDAError(f"{len(failures)} part(s) of the study failed, the first '{failures[0].what}': "
                       f"{failures[0].error}; the report, written for the rest, names each with the command that "
                       f"reruns it: {path}")
    return path


if __name__ == "__main__":
    cli.run(main)
