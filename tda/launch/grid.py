"""The grid's command line, the same for both launchers: which TDA methods run, with which options, on which device.

bash run_experiment.sh E1 E2 ... [--methods loo,if,gd] [--device cpu] [--loo.protocol scratch ...] [-- TRAINING_ARGS]

A method option is `--<method>.<option> VALUE`: the method's registry name (or one of its outputs, e.g.
`gd` for gd_gc), a dot, and the option as the method declares it (its flag in `run_tda.py --method NAME
--help`). Every one is checked with the method's own parser (type, choices, range) before anything runs.
"""
from __future__ import annotations

import argparse
import dataclasses
import re
from dataclasses import dataclass, field

from ..config import TDAError
from ..methods import REGISTRY, Method, outputs
from ..ranges import Range, ranged

DOTTED = re.compile(r"^--(?P<method>[A-Za-z0-9_]+)\.(?P<option>[A-Za-z0-9_-]+)(?:=(?P<value>.*))?$", re.S)
DEVICES = ("auto", "cpu", "cuda")


def split_training(argv: list[str]) -> tuple[list[str], list[str]]:
    """(arguments before the first `--`, training arguments after it)."""
    cut = argv.index("--") if "--" in argv else len(argv)
    return list(argv[:cut]), list(argv[cut + 1:])


def take_method_options(argv: list[str]) -> tuple[list[str], list[tuple[str, str, str]]]:
    """Take every `--METHOD.OPTION VALUE` (or `=VALUE`) out of argv: (the rest, [(method, option, value)])."""
    rest, found, i = [], [], 0
    while i < len(argv):
        m = DOTTED.match(argv[i])
        if m is None:
            rest.append(argv[i])
            i += 1
            continue
        value = m["value"]
        if value is None:
            if i + 1 >= len(argv):
                raise TDAError(f"{argv[i]} needs a value, e.g. --loo.protocol scratch")
            value, i = argv[i + 1], i + 1
        found.append((m["method"], m["option"], value))
        i += 1
    return rest, found


def method_named(name: str, flag: str) -> str:
    """The registry name of a method given by its name or one of its outputs (gd -> gd_gc); else a one-line error
    that starts with `flag`."""
    if name in REGISTRY:
        return name
    if name in outputs():
        return outputs()[name].name
    outs = [o for o in outputs() if o not in REGISTRY]
    raise TDAError(f"{flag}: unknown TDA method {name!r}: choose from {', '.join(REGISTRY)}"
                   + (f" (or an output: {', '.join(outs)})" if outs else ""))


def select_methods(text: str) -> tuple[str, ...]:
    """`--methods loo,if,gd` -> the registry names, in registry order (the pipeline's order), each once."""
    names = {method_named(n.strip(), "--methods") for n in text.replace(" ", ",").split(",") if n.strip()}
    if not names:
        raise TDAError("--methods needs at least one method, e.g. --methods loo,if,gd")
    return tuple(n for n in REGISTRY if n in names)


class _OptionParser(argparse.ArgumentParser):
    def error(self, message: str):  # a bad value: raised, then named by its dotted flag
        raise TDAError(message)


def _option_names(cls: type[Method]) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def check_method_options(found: list[tuple[str, str, str]], selected: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """{method: its option arguments} from `take_method_options`, each value checked by the method's own parser
    and the method built from them (so a range or a choice is refused here, before anything runs)."""
    argv: dict[str, list[str]] = {}
    for method, opt, value in found:
        flag = f"--{method}.{opt}"
        name = method_named(method, flag)
        cls = REGISTRY[name]
        if opt not in _option_names(cls):
            raise TDAError(f"{flag}: {name} has no option {opt!r}; its options: {', '.join(_option_names(cls))}")
        if name not in selected:
            raise TDAError(f"{flag}: {name} does not run (--methods {','.join(selected)}): add it or drop the option")
        p = _OptionParser(prog=flag, add_help=False, allow_abbrev=False)
        cls.add_arguments(p)
        try:
            p.parse_args([f"--{opt}", value])
        except TDAError as e:
            raise TDAError(f"{flag} {value}: {str(e).removeprefix(f'argument --{opt}: ')}") from None
        argv.setdefault(name, []).extend([f"--{opt}", value])
    for name, args in argv.items():
        p = _OptionParser(prog=name, add_help=False, allow_abbrev=False)
        REGISTRY[name].add_arguments(p)
        REGISTRY[name].from_args(p.parse_args(args))  # the method's own checks of the values together
    return {name: tuple(args) for name, args in argv.items()}


@dataclass(frozen=True)
class MethodChoice:
    """The TDA methods that run (None: every registered one, looked up when used), their options, the device."""

    methods: tuple[str, ...] | None = None
    options: dict[str, tuple[str, ...]] = field(default_factory=dict)
    device: str | None = None  # --device of training and every method; None: the scripts' default (auto)
    lds: int | None = None  # --lds: the LDS ground truth on this many subsets, and the methods' LDS; None: not run

    @property
    def names(self) -> tuple[str, ...]:
        """The registry names of the methods that run, in registry order."""
        return tuple(REGISTRY) if self.methods is None else self.methods

    @property
    def outputs(self) -> list[str]:
        """The score outputs the chosen methods write, e.g. ['loo', 'if', 'gd', 'gc']."""
        return [o for n in self.names for o in REGISTRY[n].outputs]

    def device_args(self) -> tuple[str, ...]:
        return ("--device", self.device) if self.device else ()

    def method_args(self, name: str) -> tuple[str, ...]:
        """What a method's step gets after its experiment and seed: the device, then its options."""
        return (*self.device_args(), *self.options.get(name, ()))

    def results_args(self) -> tuple[str, ...]:
        """--methods of the results steps: the chosen outputs when a choice was made, else nothing (all)."""
        return () if self.methods is None else ("--methods", *self.outputs)

    def describe(self) -> str:
        """The methods and their options in one line, e.g. 'LOO (--protocol scratch), IF, GD and GC'."""
        parts = []
        for n in self.names:
            opts = " ".join(self.options.get(n, ()))
            parts.append(" and ".join(REGISTRY[n].outputs.values()) + (f" ({opts})" if opts else ""))
        return (", ".join(parts) + (f"; --device {self.device}" if self.device else "")
                + (f"; LDS on {self.lds} subsets" if self.lds is not None else ""))


def add_arguments(p: argparse.ArgumentParser) -> None:
    """--methods and --device (the dotted method options are taken out before parsing: `take_method_options`)."""
    p.add_argument("--methods", default=None, metavar="M,M,...",
                   help="the TDA methods to run, by registry or output name (default: every registered one: "
                        f"{','.join(REGISTRY)}); the results steps then cover their outputs")
    p.add_argument("--device", default=None, choices=DEVICES,
                   help="--device of training and every TDA step (default: each script's own, auto)")
    p.add_argument("--lds", nargs="?", const=50, default=None, type=ranged(int, Range(ge=3)), metavar="SUBSETS",
                   help="also the LDS ground truth (run_lds.py, after the methods) on SUBSETS random half-size subsets "
                        "(default 50), and every method's LDS")
    p.add_argument("--estimate", action="store_true",
                   help="run no step: print each step's time and peak memory on this machine (per seed or Slurm task, "
                        "and for the local pipeline) from a short calibration, cached; the last line is the total")


def choice_from(args: argparse.Namespace, found: list[tuple[str, str, str]]) -> MethodChoice:
    """The parsed --methods and --device and the dotted options -> a checked MethodChoice."""
    methods = select_methods(args.methods) if args.methods is not None else None
    options = check_method_options(found, methods if methods is not None else tuple(REGISTRY))
    return MethodChoice(methods, options, args.device, getattr(args, "lds", None))


def epilog() -> str:
    """The help text's paragraph on method options."""
    return ("Method options: --METHOD.OPTION VALUE, e.g. --loo.protocol scratch --if.solver cg --if.hessian\n"
            f"gauss-newton; METHOD is a registered method ({', '.join(REGISTRY)}) or one of its outputs,\n"
            "OPTION a flag of `python run_tda.py --method METHOD --help`.")
