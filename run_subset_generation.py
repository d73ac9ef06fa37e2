"""Draw the deterministic, class-balanced data subsets of a task (DESIGN section 3)."""
from tda import cli
from tda.config import ExperimentConfig, get_task
from tda.data import generate_subsets, subset_files


def main(argv=None):
    p = cli.parser(__doc__)
    p.add_argument("--task", required=True, help="mnist3, cifar10, fmnist3 or digits3")
    p.add_argument("--num_per_class", type=int, nargs="+", default=None,
                   help="training samples per class (default: the paper's list for the task)")
    p.add_argument("--data_root", default=None,
                   help="where the source dataset lives (torchvision layout, or Fashion-MNIST IDX files)")
    p.add_argument("--overwrite", action="store_true",
                   help="rebuild the tensor files even if they exist (index lists are always kept)")
    args = p.parse_args(argv)
    spec = get_task(args.task)
    nums = args.num_per_class or list(spec.default_num_per_class)
    cfg = ExperimentConfig(model="cnn", task=spec.name, num_per_class=nums[0])
    root = args.data_root or spec.default_data_root
    if spec.name in ("mnist3", "cifar10") and args.data_root is None:
        root = str(cfg.root / root)
    if not args.overwrite and all(f.exists() for f in subset_files(cfg.data_dir, nums)):
        print(f"subsets of {spec.name} for n = {', '.join(map(str, nums))} already in {cfg.data_dir}/ (--overwrite rebuilds)")
        return
    written = generate_subsets(spec, nums, cfg.data_dir, root)
    print(f"wrote {len(written)} files to {cfg.data_dir}/ (train subsets for n = {', '.join(map(str, nums))})")


if __name__ == "__main__":
    cli.run(main)
