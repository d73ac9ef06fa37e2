"""Draw the deterministic, class-balanced data subsets of a task: index lists and tensor files under data/<task>/.

With --hf_dataset, a task of your own from any image-classification dataset (a hub id in the local cache,
a save_to_disk directory or an imagefolder directory; never downloaded), recorded in data/<task>/task.json;
for mnist3, fmnist3 and cifar10 it reads their Hugging Face copy instead of the original files.
With --paper_subsets, mnist3 and cifar10 take the index lists the paper published (data/paper_subsets/).
"""
from tda import cli, hf_data, io
from tda.config import TASKS, USER_NAME, ExperimentConfig, TaskSpec, TDAError, get_task, repo_root, task_file
from tda.data import generate_subsets
from tda.locking import claim, lock_path
from tda.paper_subsets import install_paper_subsets, paper_lists
from tda.ranges import NON_NEGATIVE, POSITIVE_INT, ranged

DEFINING = ("hf_config", "image_column", "label_column", "classes", "test_per_class")


def _defined(args, root) -> TaskSpec:
    """A new task's spec from its dataset, checked against an earlier definition of the same name."""
    if not USER_NAME.match(args.task):
        raise TDAError(f"bad task name {args.task!r}: use lowercase letters and digits only (e.g. digits5)")
    nums = args.num_per_class or [10, 20, 50]
    src = hf_data.HFSource(args.hf_dataset, args.hf_config, args.image_column, args.label_column)
    spec = hf_data.define_task(args.task, src, args.classes, nums, args.test_per_class or 30,
                               root / "data" / args.task / ".hf_cache")
    path = task_file(args.task, root)
    if path.exists():
        old = TaskSpec.from_json(path)
        now = {**spec.__dict__, **spec.source}
        was = {**old.__dict__, **(old.source or {})}
        diff = [f"{k} {was.get(k)!r} -> {v!r}" for k, v in now.items()
                if k not in ("source", "default_num_per_class") and was.get(k) != v]
        if diff:
            raise TDAError(f"task {args.task!r} is already defined differently in {path} ({', '.join(diff[:2])}): "
                           f"repeat its options, choose another task name, or delete data/{args.task}/ to redefine it")
        return old
    return spec


def main(argv=None):
    p = cli.parser(__doc__)
    p.add_argument("--task", required=True,
                   help=f"{', '.join(TASKS)}, a task defined earlier, or a new name (lowercase letters and digits) "
                        "with --hf_dataset")
    p.add_argument("--num_per_class", type=ranged(int, POSITIVE_INT), nargs="+", default=None,
                   help="training samples per class (default: the paper's list for the task; 10 20 50 for a new one)")
    p.add_argument("--data_root", default=None,
                   help="where the source dataset lives (torchvision layout, or Fashion-MNIST IDX files)")
    p.add_argument("--hf_dataset", default=None,
                   help="a Hugging Face dataset: hub id in the local cache (offline), save_to_disk or imagefolder dir")
    p.add_argument("--hf_config", default=None, help="the hub dataset's configuration name, if it has several")
    p.add_argument("--image_column", default=None, help="column of the images (default: the Image feature)")
    p.add_argument("--label_column", default=None, help="column of the labels (default: the ClassLabel feature)")
    p.add_argument("--classes", type=ranged(int, NON_NEGATIVE), nargs="+", default=None,
                   help="label ids to keep, 2 to 10 (default: all); they become classes 0..K-1 in this order")
    p.add_argument("--test_per_class", type=ranged(int, POSITIVE_INT), default=None,
                   help="test images per class of a new task (default 30), from the test split, or drawn from the "
                        "training split, disjointly, when there is none")
    p.add_argument("--paper_subsets", action="store_true",
                   help="mnist3, cifar10: copy the paper's published index lists (data/paper_subsets/<task>/) into "
                        "data/<task>/ first, so that the subsets are exactly the paper's (default n: every list it "
                        "published)")
    p.add_argument("--overwrite", action="store_true",
                   help="rebuild the tensor files even if they are up to date (index lists are kept, except that "
                        "--paper_subsets replaces one that differs from the paper's)")
    args = p.parse_args(argv)
    if args.test_per_class is not None and args.test_per_class < 1:
        raise TDAError(f"--test_per_class must be >= 1, got {args.test_per_class}")
    root = repo_root()
    given = [f"--{k}" for k in DEFINING if getattr(args, k) is not None]
    hf = None
    if args.hf_dataset and args.task not in TASKS:
        spec = _defined(args, root)
    elif args.hf_dataset:
        if args.task not in hf_data.BUILTIN:
            raise TDAError(f"the built-in {args.task} reads no Hugging Face dataset: --hf_dataset works with "
                           f"{', '.join(hf_data.BUILTIN)} or a new task name")
        if args.classes or args.test_per_class:
            raise TDAError(f"--hf_dataset with the built-in {args.task} reads its copy as it is (no --classes or "
                           "--test_per_class): give your own variant a task name of its own")
        spec, hf = TASKS[args.task], hf_data.HFSource(args.hf_dataset, args.hf_config, args.image_column,
                                                      args.label_column)
    elif given:
        raise TDAError(f"{given[0]} describes a dataset: pass it with --hf_dataset")
    else:
        spec = get_task(args.task)
    if args.paper_subsets and spec.source is not None:
        raise TDAError(f"--paper_subsets: the paper published index lists for mnist3 and cifar10, not for a task of "
                       f"your own ({spec.name})")
    paper = paper_lists(spec.name, args.num_per_class) if args.paper_subsets else None
    nums = paper or args.num_per_class or list(spec.default_num_per_class)
    cfg = ExperimentConfig(model="cnn", task=spec.name, num_per_class=nums[0], task_spec=spec)
    data_root = args.data_root or spec.default_data_root
    if spec.name in ("mnist3", "cifar10") and args.data_root is None:
        data_root = str(cfg.root / data_root)
    with claim(lock_path(cfg.data_dir, "subsets")):  # one process at a time per task
        if paper is not None:
            copied, same = install_paper_subsets(spec.name, cfg.data_dir, nums, args.overwrite)
            print(f"the paper's index lists in {cfg.data_dir}/: {len(copied)} copied, {len(same)} already there")
        written, kept = generate_subsets(spec, nums, cfg.data_dir, data_root, args.overwrite, log=print, hf=hf)
        if spec.source is not None and not task_file(spec.name, root).exists():
            io.atomic_write_text(spec.to_json(), task_file(spec.name, root))
            written.append(task_file(spec.name, root))
    what = f"{spec.name} subsets for n = {', '.join(map(str, nums))} in {cfg.data_dir}/"
    print(f"{what}: {len(written)} files written, {len(kept)} up to date" if written else f"{what}: all up to date")
    if written and spec.source is not None:
        print(f"task {spec.name}: {len(spec.train_classes)} classes {spec.source['class_names']}, "
              f"{'grey 28x28' if spec.channels == 1 else 'colour 32x32'}, {spec.epochs} epochs; experiments "
              f"cnn_{spec.name}_{nums[0]}pc, vit_{spec.name}_{nums[0]}pc, ...")


if __name__ == "__main__":
    cli.run(main)
