"""Where the entry scripts (`run_*.py`) are: the clone this package was imported from, else the current directory.

The local pipeline, the study and the Slurm launcher run the entry scripts. A clone holds them beside `tda/`
(also after `pip install -e .`); a package installed with `pip install .` has only the library (the Python API of
docs/api.md): those three then need the clone's directory as the current one, or say so in one line.
"""
from __future__ import annotations

from pathlib import Path

from .config import TDAError

#: the directory that holds the package (a clone's root, or site-packages when installed)
PACKAGE_PARENT = Path(__file__).resolve().parent.parent
#: an entry script every clone has
MARKER = "run_tda.py"


def scripts_dir() -> Path:
    """The directory of the entry scripts: the package's clone, else the current directory (a one-line error when
    neither holds them)."""
    for where in (PACKAGE_PARENT, Path.cwd()):
        if (where / MARKER).is_file():
            return where
    raise TDAError("the pipeline, the study and the Slurm launcher run the entry scripts (run_*.py) of a clone of "
                   "bayes-tda, and neither the installed package nor the current directory holds them: run from the "
                   "clone's directory (or install it with `pip install -e .`)")


def script(name: str) -> Path:
    """The path of an entry script, e.g. 'run_loo.py'."""
    return scripts_dir() / name
