"""dattri's TRAK or TracIn on every seed and checkpoint of an experiment, stored like our scores and tested like them.

An extra (`pip install -r req-extra.txt`): writes tda_scores/<experiment>/dattri_<method>/<seed>.pt, each
{scores [5, N, M], ckpt_epochs, train_indices, test_indices, settings, provenance}, one dattri attribution
per checkpoint (a single-model TRAK, or TracIn with the learning rate as weight); then
`python run_pvalues.py --experiment E --scores tda_scores/E/dattri_<method> --method_name dattri_<method>`
puts it on the p-value table beside our methods.
"""
from __future__ import annotations

import functools
import time

import torch
import torch.nn.functional as F
from torch.func import functional_call
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from tda import cli, io, provenance
from tda.attribution import load_seed_data
from tda.config import TDAError
from tda.locking import claim, lock_path
from tda.engine.functional import output_logits


def dattri_version() -> str:
    """dattri's version, or a one-line error saying how to install it."""
    try:
        from importlib.metadata import version
        import dattri  # noqa: F401
        return version("dattri")
    except ImportError:
        raise TDAError("dattri is not installed: `pip install -r req-extra.txt` (it is an optional extra)")


def checkpoint_scores(method: str, model: torch.nn.Module, state: dict, load, x_train, y_train, x_test, y_test,
                      lr: float, proj_dim: int, device: torch.device) -> torch.Tensor:
    """dattri's attribution [N, M] at one checkpoint: TRAK (one model) or TracIn (weight = learning rate)."""
    from dattri.algorithm import tracin, trak
    from dattri.algorithm.tracin import TracInAttributor
    from dattri.algorithm.trak import TRAKAttributor
    from dattri.task import AttributionTask
    for module in (tracin, trak):  # one progress bar per batch and checkpoint: silenced
        if hasattr(module, "tqdm"):
            module.tqdm = functools.partial(tqdm, disable=True)

    def loss(params, sample):
        image, label = sample
        return F.cross_entropy(output_logits(functional_call(model, params, image.unsqueeze(0))), label.unsqueeze(0))

    def correct_probability(params, sample):
        return torch.exp(-loss(params, sample))

    task = AttributionTask(loss_func=loss, model=model, checkpoints=state, checkpoints_load_func=load)
    train = DataLoader(TensorDataset(x_train, y_train), batch_size=64, shuffle=False)
    test = DataLoader(TensorDataset(x_test, y_test), batch_size=64, shuffle=False)
    projection = {"proj_dim": proj_dim, "proj_max_batch_size": 32, "proj_seed": 0, "device": str(device)}
    if method == "trak":
        attributor = TRAKAttributor(task=task, correct_probability_func=correct_probability,
                                    projector_kwargs=projection, device=str(device))
        attributor.cache(train)
        return attributor.attribute(test).detach().cpu()
    attributor = TracInAttributor(task=task, weight_list=torch.tensor([lr]), normalized_grad=False,
                                  projector_kwargs=projection, device=str(device))
    return attributor.attribute(train, test).detach().cpu()


def main(argv: list[str] | None = None) -> list[str]:
    p = cli.parser(__doc__.splitlines()[0])
    cli.add_experiment_args(p)
    p.add_argument("--method", required=True, choices=["trak", "tracin"], help="dattri's TRAK or TracIn")
    p.add_argument("--proj_dim", type=int, default=512, help="dimension of dattri's random gradient projection")
    args = p.parse_args(argv)
    version = dattri_version()
    cfg, seeds = cli.experiment_and_seeds(args)
    if cfg.model == "vit":
        raise TDAError("run_dattri.py takes the CNN-like families (cnn, cnn3l and models of your own), not the ViT")
    device = cli.resolve_device(args.device)
    output = f"dattri_{args.method}"
    settings = {"method": output, "dattri": version, "proj_dim": args.proj_dim}
    lines = []
    for seed in seeds:
        with claim(lock_path(cfg.scores_dir, f"{output}_{seed}")):
            inputs = provenance.score_inputs(cfg, seed, output, settings) if all(
                cfg.ckpt_path(seed, e).exists() for e in cfg.ckpt_epochs) else None
            path = cfg.scores_path(output, seed)
            if inputs is not None and not args.overwrite and path.exists() and provenance.changed(
                    io.load_scores(cfg, output, seed).get("provenance"), inputs) is None:
                lines.append(f"seed {seed}: already done, kept")
                continue
            d = load_seed_data(cfg, seed, device, progress=False)
            t0 = time.perf_counter()

            def load(model, state):
                d.backend.load_state(model, state)
                return model.eval()

            per_ckpt = [checkpoint_scores(args.method, d.backend.load(ck, device), ck["state_dict"], load, d.x_train,
                                          d.y_train, d.x_test, d.y_test, cfg.lr, args.proj_dim, device)
                        for ck in d.checkpoints]
            seconds = time.perf_counter() - t0
            io.save_scores(cfg, output, seed, torch.stack(per_ckpt), d.train_indices, d.test_indices,
                           {**settings, "seconds": seconds}, inputs)
            lines.append(f"seed {seed}: done in {seconds:.1f} s")
    lines.append(f"scores in {cfg.scores_dir / output}/<seed>.pt; test them: python run_pvalues.py --experiment "
                 f"{cfg.name} --scores {cfg.scores_dir / output} --method_name {output}")
    print("\n".join(lines))
    return lines


if __name__ == "__main__":
    cli.run(main)
