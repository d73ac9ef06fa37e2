"""Fine-tune the ViT-LoRA ensemble of an experiment: one model per seed, the checkpoints of the last 5 epochs saved."""
from tda import cli, training, workers, vit
from tda.backends import ViTBackend
from tda.config import TDAError


def main(argv=None):
    p = cli.parser(__doc__)
    cli.add_experiment_args(p)
    p.add_argument("--model_name_or_path", default=None,
                   help=f"Hugging Face id or local save_pretrained directory of the pretrained ViT "
                        f"(default: ${vit.MODEL_ENV}, else {vit.DEFAULT_VIT})")
    args = p.parse_args(argv)
    cfg, seeds = cli.experiment_and_seeds(args)
    if cfg.model != "vit":
        raise TDAError(f"{cfg.name} is not a ViT experiment: use {cfg.train_script}")
    backend = ViTBackend(cfg, args.model_name_or_path or vit.default_model_name_or_path())
    device = cli.resolve_device(args.device)
    rows = training.train_seeds(cfg, seeds, device, args.overwrite, backend, workers=cli.workers(args, device),
                                strict=False)
    for r in rows:
        if r["error"]:
            print(f"seed {r['seed']}: failed: {r['error'].splitlines()[0]}")
            continue
        state = "already fine-tuned" if r["skipped"] else "fine-tuned"
        print(f"seed {r['seed']}: {state} from {r['checkpoint'].get('model_name_or_path', '?')}, "
              f"test accuracy {r['test_accuracy']:.3f} (epoch {cfg.ckpt_epochs[-1]})")
    workers.raise_failed_rows(rows)
    print(f"checkpoints (trainable LoRA + head tensors) in {cfg.model_dir}/<seed>/epoch_<e>.pt")


if __name__ == "__main__":
    cli.run(main)
