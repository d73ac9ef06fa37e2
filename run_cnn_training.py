"""Train the CNN ensemble of an experiment: one model per seed, the checkpoints of the last 5 epochs saved."""
from tda import cli, training, workers
from tda.config import TDAError


def main(argv=None):
    p = cli.parser(__doc__)
    cli.add_experiment_args(p)
    args = p.parse_args(argv)
    cfg, seeds = cli.experiment_and_seeds(args)
    if cfg.model == "vit":
        raise TDAError(f"{cfg.name} is a ViT experiment: use run_vit_finetuning.py")
    device = cli.resolve_device(args.device)
    rows = training.train_seeds(cfg, seeds, device, args.overwrite, workers=cli.workers(args, device), strict=False)
    for r in rows:
        if r["error"]:
            print(f"seed {r['seed']}: failed: {r['error'].splitlines()[0]}")
            continue
        state = "already trained" if r["skipped"] else "trained"
        print(f"seed {r['seed']}: {state}, test accuracy {r['test_accuracy']:.3f} (epoch {cfg.ckpt_epochs[-1]})")
    workers.raise_failed_rows(rows)
    print(f"checkpoints in {cfg.model_dir}/<seed>/epoch_<e>.pt")


if __name__ == "__main__":
    cli.run(main)
