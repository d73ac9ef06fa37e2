"""Experiment configuration: every constant of an experiment, parsed from its name `<model>_<task>_<n>pc`."""
from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

PAPER_SEEDS = (446, 724, 571, 296, 854, 968, 245, 374, 829, 470)
SEEDS_FILE = "random_seeds.pt"
MODELS = ("cnn", "cnn3l", "vit")
#: the training entry point of each model family: a built-in family not listed trains with DEFAULT_TRAIN_SCRIPT, a
#: family of models.json with the script its entry names, if any (docs/extending.md); both launchers call it
DEFAULT_TRAIN_SCRIPT = "run_cnn_training.py"
TRAIN_SCRIPTS = {"vit": "run_vit_finetuning.py"}
N_CKPTS = 5
SUBSET_GENERATION_SEED = 2023  # fixed so every machine draws the same subsets (docs/pipeline.md)
DEFAULT_VIT = "google/vit-base-patch16-224-in21k"
TASK_FILE = "task.json"  # data/<task>/task.json defines a task of the user's own (docs/pipeline.md#tasks)
MODELS_FILE = "models.json"  # <root>/models.json registers model families of the user's own (docs/own_data.md)
USER_NAME = re.compile(r"^[a-z0-9]+$")
#: experiment-name suffixes that take one source of seed noise away (docs/study.md)
VARIANTS = {"init": "only the initialisation varies with the seed; every seed uses the first seed's batch order",
            "batch": "only the batch order varies with the seed; every seed starts from the first seed's init"}


class TDAError(Exception):
    """A user-facing error: printed as one line by the entry scripts, never as a traceback."""


@dataclass(frozen=True)
class TaskSpec:
    """One task: its dataset, classes, image format, epochs and test-set rule (docs/pipeline.md#tasks)."""

    name: str
    channels: int
    image_size: int
    train_classes: tuple[int, ...]
    epochs: int
    default_data_root: str
    default_num_per_class: tuple[int, ...]
    test_per_class: int | None  # per-class test draw; None: uniform draw of `test_size`
    test_size: int
    source: dict | None = None  # a user-defined task: where its data comes from (data/<task>/task.json)

    def to_json(self) -> str:
        """The spec as data/<task>/task.json holds it."""
        return json.dumps(asdict(self), indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, path: Path) -> "TaskSpec":
        """A user-defined task from its task.json (a one-line error when the file is unreadable)."""
        try:
            d = json.loads(Path(path).read_text())
            d["train_classes"] = tuple(d["train_classes"])
            d["default_num_per_class"] = tuple(d["default_num_per_class"])
            return cls(**d)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise TDAError(f"cannot read the task definition {path} ({type(e).__name__}: {e}): fix it, or delete "
                           "it and define the task again with run_subset_generation.py")


TASKS: dict[str, TaskSpec] = {
    "mnist3": TaskSpec("mnist3", 1, 28, (0, 1, 2), 15, "data/raw", (10, 20, 50), None, 900),
    "fmnist3": TaskSpec("fmnist3", 1, 28, (0, 1, 2), 15, "/usr/share/datasets/fashion-mnist",
                        (10, 20, 50), None, 900),
    "cifar10": TaskSpec("cifar10", 3, 32, tuple(range(10)), 30, "data/raw",
                        (10, 20, 30, 40, 50, 60), 50, 500),
    "digits3": TaskSpec("digits3", 1, 28, (0, 1, 2), 15, "", (10, 20, 50), 100, 300),
}


def repo_root() -> Path:
    """Where data/, models/, tda_scores/ and results/ live: $TDA_ROOT, else the current directory."""
    return Path(os.environ.get("TDA_ROOT", "."))


def task_file(name: str, root: Path | None = None) -> Path:
    """Where a user-defined task's definition lives: data/<task>/task.json under the root."""
    return (root or repo_root()) / "data" / name / TASK_FILE


def user_tasks(root: Path | None = None) -> list[str]:
    """The names of the tasks defined under data/ by a task.json."""
    data = (root or repo_root()) / "data"
    return sorted(p.parent.name for p in data.glob(f"*/{TASK_FILE}")) if data.is_dir() else []


def get_task(name: str, root: Path | None = None) -> TaskSpec:
    """A built-in task, or one defined by data/<name>/task.json; else a one-line error listing the tasks."""
    if name in TASKS:
        return TASKS[name]
    path = task_file(name, root)
    if path.exists():
        return TaskSpec.from_json(path)
    known = ", ".join([*TASKS, *user_tasks(root)])
    raise TDAError(f"unknown task {name!r}: choose one of {known}, or define it from a dataset of your own with "
                   f"`python run_subset_generation.py --task {name} --hf_dataset ...`")


def user_model_entries(root: Path | None = None) -> dict[str, dict[str, str]]:
    """Model families registered in <root>/models.json: name -> {"factory": "module:function"[, "train_script": path]}.

    An entry is either the factory string or an object with "factory" and, optionally, "train_script" (a training
    entry point of the user's own, relative to the root unless absolute).
    """
    path = (root or repo_root()) / MODELS_FILE
    if not path.exists():
        return {}
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise TDAError(f"cannot read the model registry {path} ({type(e).__name__}: {e}): fix or delete it")
    if not isinstance(d, dict):
        d = {"<not a JSON object>": None}
    out = {}
    for k, v in d.items():
        entry = {"factory": v} if isinstance(v, str) else v
        ok = (USER_NAME.match(str(k)) and k not in MODELS and isinstance(entry, dict) and set(entry) <= _ENTRY_KEYS
              and isinstance(entry.get("factory"), str) and entry["factory"].count(":") == 1
              and isinstance(entry.get("train_script", ""), str))
        if not ok:
            raise TDAError(f"{path}: bad entry {k!r}: expected {{\"<name>\": \"module:function\"}} or {{\"<name>\": "
                           f"{{\"factory\": \"module:function\", \"train_script\": \"my_train.py\"}}}} with names of "
                           f"lowercase letters and digits other than {', '.join(MODELS)}; fix or delete it")
        out[k] = dict(entry)
    return out


_ENTRY_KEYS = {"factory", "train_script"}


def user_models(root: Path | None = None) -> dict[str, str]:
    """Model families registered in <root>/models.json: model name -> `module:function` of its constructor."""
    return {k: v["factory"] for k, v in user_model_entries(root).items()}


def model_names(root: Path | None = None) -> list[str]:
    """Every model family an experiment name may use: the built-in MODELS, then those of models.json."""
    return [*MODELS, *user_models(root)]


@dataclass(frozen=True)
class ExperimentConfig:
    """All settings of one experiment `<model>_<task>_<n>pc[_<variant>]`: training, LiSSA and LoRA constants, paths."""

    model: str
    task: str
    num_per_class: int
    root: Path = field(default_factory=repo_root)
    variant: str | None = None  # a key of VARIANTS: which source of seed noise is taken away
    task_spec: TaskSpec | None = field(default=None, compare=False, repr=False)  # resolved once by parse_experiment
    lr: float = 1e-3
    weight_decay: float = 5e-3
    batch_size: int = 32
    n_ckpts: int = N_CKPTS
    # IF / LiSSA: the reference's settings (docs/methods.md)
    lissa_damp: float = 5e-3
    lissa_scale: float = 1e4
    lissa_batch_size: int = 8
    # ViT-LoRA settings (docs/pipeline.md#models)
    lora_r: int = 16
    lora_alpha: int = 16
    lora_dropout: float = 0.1
    lora_targets: tuple[str, ...] = ("query", "value")
    num_labels: int = 10

    @property
    def name(self) -> str:
        return f"{self.model}_{self.task}_{self.num_per_class}pc" + (f"_{self.variant}" if self.variant else "")

    @property
    def spec(self) -> TaskSpec:
        return self.task_spec or get_task(self.task, self.root)

    @property
    def epochs(self) -> int:
        return self.spec.epochs

    @property
    def ckpt_epochs(self) -> list[int]:
        """0-based epochs after which checkpoints are saved: the last `n_ckpts`."""
        return list(range(self.epochs - self.n_ckpts, self.epochs))

    @property
    def n_train(self) -> int:
        return self.num_per_class * len(self.spec.train_classes)

    # ---- paths (docs/pipeline.md) ----
    @property
    def data_dir(self) -> Path:
        return self.root / "data" / self.task

    @property
    def train_subset_pt(self) -> Path:
        return self.data_dir / f"train_subset_{self.num_per_class}pc.pt"

    @property
    def test_subset_pt(self) -> Path:
        return self.data_dir / "test_subset.pt"

    @property
    def model_dir(self) -> Path:
        return self.root / "models" / self.model / self.name.split("_", 1)[1]

    def seed_dir(self, seed: int) -> Path:
        return self.model_dir / str(seed)

    def ckpt_path(self, seed: int, epoch: int) -> Path:
        return self.seed_dir(seed) / f"epoch_{epoch}.pt"

    @property
    def scores_dir(self) -> Path:
        return self.root / "tda_scores" / self.name

    def scores_path(self, method: str, seed: int) -> Path:
        return self.scores_dir / method / f"{seed}.pt"

    @property
    def results_dir(self) -> Path:
        return self.root / "results" / self.name

    @property
    def train_script(self) -> str:
        """The model family's training entry point: a script of the repository, or a path of the user's own."""
        if self.model in MODELS:
            return TRAIN_SCRIPTS.get(self.model, DEFAULT_TRAIN_SCRIPT)
        own = user_model_entries(self.root).get(self.model, {}).get("train_script")
        if not own:
            return DEFAULT_TRAIN_SCRIPT
        return str(Path(own) if Path(own).is_absolute() else (self.root / own).resolve())


_NAME = re.compile(r"^(?P<model>[a-z0-9]+)_(?P<task>[a-z0-9]+)_(?P<n>\d+)pc(?:_(?P<variant>[a-z]+))?$")


def parse_experiment(name: str, root: Path | None = None) -> ExperimentConfig:
    """Parse `<model>_<task>_<n>pc[_<variant>]`; an invalid name raises a one-line TDAError listing what is valid."""
    root = Path(root) if root is not None else repo_root()
    tasks = [*TASKS, *user_tasks(root)]
    models = model_names(root)
    valid = (f"expected <model>_<task>_<n>pc[_<variant>] with model in {{{', '.join(models)}}}, "
             f"task in {{{', '.join(tasks)}}}, variant in {{{', '.join(VARIANTS)}}}, e.g. cnn_digits3_10pc")
    m = _NAME.match(name)
    if not m:
        raise TDAError(f"bad experiment name {name!r}: {valid}")
    model, task, n, variant = m["model"], m["task"], int(m["n"]), m["variant"]
    if model not in models:
        raise TDAError(f"unknown model {model!r} in {name!r}: {valid}")
    if task not in tasks:
        raise TDAError(f"unknown task {task!r} in {name!r}: {valid}")
    if variant is not None and variant not in VARIANTS:
        raise TDAError(f"unknown variant {variant!r} in {name!r}: {valid}")
    if n < 1:
        raise TDAError(f"bad experiment name {name!r}: n per class must be >= 1; {valid}")
    return ExperimentConfig(model=model, task=task, num_per_class=n, root=root, variant=variant,
                            task_spec=get_task(task, root))
