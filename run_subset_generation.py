"""Draw the deterministic, class-balanced data subsets of a task: index lists and tensor files under data/<task>/."""
from tda import cli
from tda.config import ExperimentConfig, get_task
from tda.data import generate_subsets
from tda.locking import claim, lock_path


def main(argv=None):
    p = cli.parser(__doc__)
    p.add_argument("--task", required=True, help="mnist3, cifar10, fmnist3 or digits3")
    p.add_argument("--num_per_class", type=int, nargs="+", default=None,
                   help="training samples per class (default: the paper's list for the task)")
    p.add_argument("--data_root", default=None,
                   help="where the source dataset lives (torchvision layout, or Fashion-MNIST IDX files)")
    p.add_argument("--overwrite", action="store_true",
                   help="rebuild the tensor files even if they are up to date (index lists are always kept)")
    args = p.parse_args(argv)
    spec = get_task(args.task)
    nums = args.num_per_class or list(spec.default_num_per_class)
    cfg = ExperimentConfig(model="cnn", task=spec.name, num_per_class=nums[0])
    root = args.data_root or spec.default_data_root
    if spec.name in ("mnist3", "cifar10") and args.data_root is None:
        root = str(cfg.root / root)
    with claim(lock_path(cfg.data_dir, "subsets")):  # one process at a time per task
        written, kept = generate_subsets(spec, nums, cfg.data_dir, root, args.overwrite, log=print)
    what = f"{spec.name} subsets for n = {', '.join(map(str, nums))} in {cfg.data_dir}/"
    print(f"{what}: {len(written)} files written, {len(kept)} up to date" if written else f"{what}: all up to date")


if __name__ == "__main__":
    cli.run(main)
