"""The study: the noise decomposition on planted ensembles, the variants' seed semantics, bitwise-identical `_batch`
training at one batch per epoch, agreement signs, and the study's plan and workspace."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from helpers import make_tiny_root
from tda.backends import epoch_batches, get_backend
from tda.config import parse_experiment
from tda.results.inventory import MethodScores
from tda.seeds import load_seeds
from tda.study.compare import agreement, significance
from tda.study.decompose import bootstrap_shares, decompose
from tda.study.plan import ARMS, quick_plan
from tda.training import train_seeds

SEEDS = (446, 724, 571)


def planted(n_seeds: int, n_pairs: int, s_a: float, s_b: float, s_ab: float, seed: int = 0) -> dict[str, np.ndarray]:
    """tau [S, n_pairs] per ensemble with planted init (A), batch-order (B) and interaction (AB) variances.

    Seed k has an initialisation a_k and a batch order b_k: `both` is (a_k, b_k), `init` (a_k, b_1), `batch` (a_1, b_k).
    """
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=n_pairs)
    a = rng.normal(scale=np.sqrt(s_a), size=(n_seeds, n_pairs))
    b = rng.normal(scale=np.sqrt(s_b), size=(n_seeds, n_pairs))
    cells: dict[tuple[int, int], np.ndarray] = {}

    def tau(i: int, j: int) -> np.ndarray:
        if (i, j) not in cells:
            cells[(i, j)] = mean + a[i] + b[j] + rng.normal(scale=np.sqrt(s_ab), size=n_pairs)
        return cells[(i, j)]

    design = {"both": [(k, k) for k in range(n_seeds)], "init": [(k, 0) for k in range(n_seeds)],
              "batch": [(0, k) for k in range(n_seeds)]}
    return {s: np.stack([tau(i, j) for i, j in d]) for s, d in design.items()}


@pytest.mark.parametrize("s_a,s_b,s_ab", [(2.0, 1.0, 0.5), (0.3, 2.5, 0.0), (1.0, 0.0, 1.0)])
def test_decomposition_recovers_planted_variances(s_a: float, s_b: float, s_ab: float) -> None:
    total = s_a + s_b + s_ab
    d = decompose(planted(10, 6000, s_a, s_b, s_ab, seed=int(10 * s_a)))
    # pooled over 6000 pairs, each variance estimate has a relative standard error of ~sqrt(2/9/6000) = 0.6%
    for got, want in ((d.v_both, total), (d.v_init, s_a + s_ab), (d.v_batch, s_b + s_ab)):
        assert abs(got - want) < 0.04 * total
    for name, want in (("init", s_a), ("batch", s_b), ("interaction", s_ab)):
        assert abs(d.shares[name] - want / total) < 0.05, (name, d.shares)
    assert d.ratios["init"] == pytest.approx((s_a + s_ab) / total, abs=0.04)


def test_bootstrap_interval_covers_the_planted_share() -> None:
    per_seed = planted(10, 400, 1.0, 1.0, 0.0, seed=3)
    ci = bootstrap_shares(per_seed, reps=100)
    assert ci["init"][0] < 0.5 < ci["init"][1] and ci["batch"][0] < 0.5 < ci["batch"][1]


def test_bootstrap_leaves_out_draws_of_a_single_seed() -> None:
    # with 2 seeds per ensemble, every draw of both seeds is the data itself, so the interval is the estimate;
    # a draw of one seed twice would give that ensemble a variance of 0 and the shares far off it
    per_seed = planted(2, 50, 1.0, 1.0, 0.5, seed=4)
    shares = decompose(per_seed).shares
    for name, (lo, hi) in bootstrap_shares(per_seed, reps=50).items():
        assert lo == pytest.approx(shares[name]) and hi == pytest.approx(shares[name]), name


def test_decompose_rejects_mismatched_ensembles() -> None:
    with pytest.raises(ValueError, match="different pairs"):
        decompose({"both": np.zeros((3, 2, 2)), "init": np.zeros((3, 2, 3)), "batch": np.zeros((3, 2, 2))})


def _flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _sets(batches):
    return [[b.sort().values for b in epoch] for epoch in batches]


def _same(a, b) -> bool:
    return all(torch.equal(x, y) for ea, eb in zip(a, b) for x, y in zip(ea, eb))


def test_variant_seed_semantics(tmp_path) -> None:
    torch.save(torch.tensor(SEEDS), tmp_path / "random_seeds.pt")
    n = 70  # three batches of 32 per epoch: batch order matters
    paper = get_backend(parse_experiment("cnn_digits3_20pc", tmp_path))
    init = get_backend(parse_experiment("cnn_digits3_20pc_init", tmp_path))
    batch = get_backend(parse_experiment("cnn_digits3_20pc_batch", tmp_path))
    ref = {s: paper.initial(s, n) for s in SEEDS}  # the paper's: seed s sets both
    for s in SEEDS:
        m_i, b_i = init.initial(s, n)
        m_b, b_b = batch.initial(s, n)
        assert torch.equal(_flat(m_i), _flat(ref[s][0]))              # _init: the seed's own initialisation
        assert _same(b_i, _sets(ref[SEEDS[0]][1]))                    # ... and the first seed's batch order
        assert torch.equal(_flat(m_b), _flat(ref[SEEDS[0]][0]))       # _batch: the first seed's initialisation
        assert _same(b_b, _sets(ref[s][1]))                           # ... and the seed's own batch order
        assert _same(init.continuation_batches(s, n), init.continuation_batches(SEEDS[0], n))
        torch.manual_seed(s)
        want = _sets(epoch_batches(n, 32, 15))  # the reference LOO's draw, reseeded with the seed
        assert _same(batch.continuation_batches(s, n), want)
    assert not torch.equal(_flat(init.initial(SEEDS[0], n)[0]), _flat(init.initial(SEEDS[1], n)[0]))
    assert not _same(batch.initial(SEEDS[0], n)[1], batch.initial(SEEDS[1], n)[1])
    assert paper.provenance() == {"family": "CNNBackend"}  # existing checkpoints stay current
    assert init.provenance() == {"family": "CNNBackend", "reference seed": SEEDS[0]}
    assert not _same(paper.initial(SEEDS[1], n)[1], _sets(ref[SEEDS[1]][1]))  # the paper's keeps the loader's order


def test_batch_variant_trains_bitwise_identically_with_one_batch_per_epoch(tmp_path) -> None:
    root = make_tiny_root(tmp_path, seeds=SEEDS, n_per_class=2)  # N = 6: every epoch is one batch

    def params(experiment: str) -> dict[int, list[torch.Tensor]]:
        cfg = parse_experiment(experiment, root)
        train_seeds(cfg, list(SEEDS), progress=False)
        return {s: [torch.load(cfg.ckpt_path(s, e), weights_only=True)["state_dict"] for e in cfg.ckpt_epochs]
                for s in SEEDS}

    b = params("cnn_digits3_2pc_batch")
    for s in SEEDS[1:]:
        assert all(torch.equal(x[k], y[k]) for x, y in zip(b[s], b[SEEDS[0]]) for k in x)
    i = params("cnn_digits3_2pc_init")
    assert not torch.equal(i[SEEDS[1]][-1]["fc2.weight"], i[SEEDS[0]][-1]["fc2.weight"])
    # the first seed is the same run in both variants
    assert all(torch.equal(x[k], y[k]) for x, y in zip(i[SEEDS[0]], b[SEEDS[0]]) for k in x)
    ck = torch.load(parse_experiment("cnn_digits3_2pc_batch", root).ckpt_path(SEEDS[1], 14), weights_only=True)
    assert ck["provenance"]["model"]["reference seed"] == SEEDS[0]


def _scores(label: str, mu: np.ndarray, noise: float, seed: int) -> MethodScores:
    rng = np.random.default_rng(seed)
    s = mu[None, None] + noise * rng.normal(size=(4, 2, *mu.shape))
    return MethodScores("x", [1, 2, 3, 4], s, list(range(mu.shape[0])), list(range(mu.shape[1])), [0, 1], label=label)


def test_agreement_aligns_signs_and_significance_rows() -> None:
    mu = np.random.default_rng(0).normal(size=(6, 5))
    loo, ifs = _scores("LOO (scratch)", mu, 0.01, 1), _scores("IF (LiSSA)", -3 * mu, 0.01, 2)
    f = agreement({"LOO (scratch)": loo, "IF (LiSSA)": ifs}, {"LOO (scratch)": loo}, 2,
                  {"LOO (scratch)": 1, "IF (LiSSA)": -1})
    row = f.set_index("method").loc["IF (LiSSA)"]
    assert row["pearson_mu"] < -0.99 and row["aligned_pearson_mu"] > 0.99 and row["n_seeds"] == 4
    sig = significance(loo, 2)
    assert sig["n_pairs"] == 30 and 0 <= sig["z_mean_p"] <= 1


def test_plan_and_workspace(tmp_path) -> None:
    from tda.study.workspace import checkpoints_identical, prepare
    plan = quick_plan(tmp_path / "work", tmp_path / "out")
    plan.decomposition_ns, plan.protocol_ns = (20,), (10,)
    steps = plan.steps()
    what = [s.what for s in steps]
    assert {"training cnn_digits3_20pc_init", "training cnn_digits3_20pc_batch", "training cnn_digits3_10pc_batch",
            "loo_paper cnn_digits3_10pc", "if_cg_gn cnn_digits3_10pc"} <= set(what)
    arm = next(s for s in steps if s.what.startswith("if_cg_gn"))
    assert arm.root == plan.arm_root("if_cg_gn") and ("--hessian", "gauss-newton") == arm.args[-2:]
    assert not any("_init" in w for w in what if "10pc" in w)  # no decomposition where batch noise is zero
    prepare(plan, log=lambda line: None)
    assert load_seeds(plan.root) == list(load_seeds())[: plan.n_seeds]
    assert load_seeds(plan.arm_root("if_cg_gn")) == list(load_seeds())[: plan.cg_seeds]
    assert (plan.arm_root("loo_paper") / "models").resolve() == (plan.root / "models").resolve()
    test_list = (plan.root / "data" / "digits3" / "test_subset.txt").read_text().split()
    assert len(test_list) == plan.test_size and set(ARMS) == set(plan.arms)
    prepare(plan, log=lambda line: None)  # idempotent
    root = make_tiny_root(tmp_path / "tiny", seeds=SEEDS, n_per_class=2)
    train_seeds(parse_experiment("cnn_digits3_2pc_batch", root), list(SEEDS), progress=False)
    assert checkpoints_identical(root, "cnn_digits3_2pc_batch")["all_identical"]


#: the sign of each method in the paper's terms, by the word a study label starts with: +1 where a positive
#: score means "j helps i" (LOO, GD, GC), -1 for ATS and IF (Koh & Liang's sign)
LEADING_WORD_OUTPUT = {"LOO": "loo", "ATS": "ats", "IF": "if", "GD": "gd", "GC": "gc"}
PAPER_SIGN = {"loo": 1, "gd": 1, "gc": 1, "ats": -1, "if": -1}


def _synthetic_loaded(plan) -> "object":
    """Every score set the study loads, as random tau: the main outputs of the three ensembles of each setting and
    every arm of each protocol setting, CG on fewer seeds than the others (as the study runs it)."""
    from tda.study.analysis import Loaded
    from tda.study.plan import MAIN_LABELS
    rng = np.random.default_rng(5)
    seeds = list(load_seeds())[: plan.n_seeds]

    def ms(output: str, label: str, n_seeds: int) -> MethodScores:
        return MethodScores(output, seeds[:n_seeds], rng.normal(size=(n_seeds, 5, 4, 3)), list(range(4)),
                            list(range(3)), [10, 11, 12, 13, 14], label=label)

    loaded = Loaded()
    for task in plan.tasks:
        for n in plan.ns:
            for source in plan.sources(n):
                loaded.main[(task, n, source)] = {lab: ms(o, lab, plan.n_seeds) for o, lab in MAIN_LABELS.items()}
            if n in plan.protocol_ns:
                loaded.arms[(task, n)] = {ARMS[a][3]: ms(ARMS[a][2], ARMS[a][3], plan.arm_seeds(a)) for a in plan.arms}
    return loaded


def test_every_label_the_study_builds_has_its_registered_methods_sign(tmp_path) -> None:
    from tda.methods import outputs
    from tda.study import analysis
    from tda.study.plan import LABEL_OUTPUT, MAIN_LABELS, sign_of
    plan = quick_plan(tmp_path / "work", tmp_path / "out")
    plan.decomposition_ns, plan.protocol_ns = (14,), (14,)
    loaded = _synthetic_loaded(plan)
    tables = {"decomposition": analysis.decomposition_table(plan, loaded, reps=5),
              "variants": analysis.variants_table(plan, loaded), "protocols": analysis.protocols_table(plan, loaded),
              "agreement": analysis.agreement_table(plan, loaded)}
    built = set()
    for name, t in tables.items():
        assert len(t), name
        built |= {lab for col in ("method", "arm", "reference") if col in t for lab in t[col]}
    # the labels the study builds: the main outputs, every arm, and LiSSA on CG's seeds (CG ran on fewer seeds)
    assert set(MAIN_LABELS.values()) | {a[3] for a in ARMS.values()} | {"IF (LiSSA), CG's seeds"} == built
    assert built == set(LABEL_OUTPUT)  # and no label is declared that the study never builds
    # the registry's own signs are the paper's, and every label carries its method's
    assert {o: m.sign for o, m in outputs().items()} == PAPER_SIGN
    for lab in built:
        output = LEADING_WORD_OUTPUT[lab.split()[0]]
        assert sign_of(lab) == outputs()[output].sign == PAPER_SIGN[output], lab
    agree = tables["agreement"]
    for r in agree.itertuples():  # agreement positive whatever the sign conventions of the two
        want = PAPER_SIGN[LEADING_WORD_OUTPUT[r.method.split()[0]]] * PAPER_SIGN[LEADING_WORD_OUTPUT[r.reference.split()[0]]]
        assert r.aligned_pearson_mu == pytest.approx(want * r.pearson_mu)
    derived = tables["protocols"].set_index("arm").loc["IF (LiSSA), CG's seeds"]
    assert derived["n_seeds"] == plan.cg_seeds < plan.n_seeds
    with pytest.raises(ValueError, match="no label 'IF \\(LiSSA\\) on 2 seeds'"):
        sign_of("IF (LiSSA) on 2 seeds")


def test_a_failed_step_leaves_the_others_running(tmp_path, monkeypatch) -> None:
    from tda.study import run as study_run
    plan = quick_plan(tmp_path / "work", tmp_path / "out")
    plan.decomposition_ns, plan.protocol_ns = (20,), (10,)
    ran = []

    def fake_step(step, log_file):
        ran.append(step.what)
        if step.what == "training cnn_digits3_20pc_init":
            return 1.0, "training broke"
        if step.what == "if_cg_gn cnn_digits3_10pc":
            return 2.0, "RuntimeError: CG broke"
        return 0.5, None

    monkeypatch.setattr(study_run, "prepare", lambda plan, log: None)
    monkeypatch.setattr(study_run, "run_step", fake_step)
    timings, failures = study_run.run_steps(plan)
    steps = {s.what: s for s in plan.steps()}
    assert len(steps) == len(plan.steps())  # step names are unique: they are what `needs` refers to
    needing = {w for w, s in steps.items() if "training cnn_digits3_20pc_init" in s.needs}
    assert needing == {f"{m} cnn_digits3_20pc_init" for m in ("loo", "ats", "if", "gd_and_gc", "p-values",
                                                             "correlations")}
    assert set(ran) == set(steps) - needing  # everything else ran, the arms after the failed one included
    status = timings.set_index("step")["status"]
    assert (status[list(needing)] == "not run").all() and status["if_cg_gn cnn_digits3_10pc"] == "failed"
    assert (status.drop([*needing, "training cnn_digits3_20pc_init", "if_cg_gn cnn_digits3_10pc"]) == "done").all()
    by = {f.what: f for f in failures}
    assert by["training cnn_digits3_20pc_init"].error == "training broke"
    assert by["loo cnn_digits3_20pc_init"].error == "not run: it needs 'training cnn_digits3_20pc_init', which failed"
    cg = by["if_cg_gn cnn_digits3_10pc"]
    assert cg.command == (f"TDA_ROOT={plan.arm_root('if_cg_gn').resolve()} python run_if.py --experiment "
                          "cnn_digits3_10pc --seed_id all --solver cg --hessian gauss-newton")


def test_run_step_catches_a_bad_option_and_an_unexpected_error(tmp_path, monkeypatch) -> None:
    from tda.study.plan import Step
    from tda.study.workspace import entry_script, run_step
    log, root_before = tmp_path / "study.log", os.environ.get("TDA_ROOT")
    bad = Step("loo_paired x", tmp_path, "run_loo.py", ("--experiment", "cnn_digits3_2pc", "--seed_id", "all",
                                                         "--protocol", "bogus"))
    _, error = run_step(bad, log)
    assert error.startswith("run_loo.py: error: argument --protocol: invalid choice: 'bogus'"), error

    def broken(argv):
        raise RuntimeError("a bug\nsecond line")
    monkeypatch.setattr(entry_script("run_ats.py"), "main", broken)
    _, error = run_step(Step("ats x", tmp_path, "run_ats.py", ()), log)
    assert error == f"RuntimeError: a bug (traceback in {log})"
    text = log.read_text()
    assert "Traceback" in text and "failed: RuntimeError: a bug" in text
    assert os.environ.get("TDA_ROOT") == root_before  # the step's root is set only while it runs
