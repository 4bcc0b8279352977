"""`evonorm plot DIR -o FILE.png`: the fronts, progress and rejection funnel of a run
(`search.analysis.plots`)."""
from __future__ import annotations


def add_arguments(parser):
    parser.add_argument("run_dir", metavar="DIR", help="a run directory")
    parser.add_argument("-o", "--output", metavar="FILE", required=True,
                        help="image file to write (.png, .pdf or .svg)")
    parser.add_argument("--dpi", type=int, default=120)


def run(args) -> int:
    from search.analysis.plots import plot_run

    output = plot_run(args.run_dir, args.output, dpi=args.dpi)
    print(f"wrote {output}")
    return 0
