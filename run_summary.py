"""The paper's comparison across experiments: mean p-values and significant fractions of every method in each.

python run_summary.py                                   # every experiment with results under results/
python run_summary.py --experiments cnn_digits3_10pc cnn_digits3_20pc
Writes results/summary/ (report.md, CSVs, figures); see docs/study.md.
"""
from pathlib import Path

from tda import cli
from tda.results.summary import write_summary


def main(argv: list[str] | None = None) -> Path:
    p = cli.parser(__doc__.splitlines()[0])
    p.add_argument("--experiments", nargs="+", default=None,
                   help="experiments (names of results/<name>/) to compare; default: every one with results")
    p.add_argument("--out", default=None, help="output directory (default: results/summary)")
    p.add_argument("--overwrite", action="store_true", help="rewrite outputs that are up to date")
    args = p.parse_args(argv)
    path = write_summary(args.experiments, out_dir=Path(args.out) if args.out else None, overwrite=args.overwrite)
    print(f"report: {path}")
    return path


if __name__ == "__main__":
    cli.run(main)
