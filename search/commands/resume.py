"""`evonorm resume DIR`: continue a killed or interrupted search from its run directory.

The configuration comes from DIR/run.json; where it runs (executor, address,
workers) may be changed, and the budget raised. The population is rebuilt from
the records (the last P `ok` ones in id order), the screen's memory from all of
them, ids continue after the highest recorded one, and each new candidate's RNG
is derived from (seed, id), as in a fresh run. A run recorded by another trainer version (or
before versioning) is refused unless --allow-trainer-change (search.provenance). The work is
`Session.resume`.
"""
from __future__ import annotations


def add_arguments(parser):
    from search.config import add_flags
    parser.add_argument("run_dir", metavar="DIR", help="run directory written by evonorm search")
    parser.set_defaults(_settings=add_flags(parser, resume=True))
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.add_argument("--allow-trainer-change", action="store_true",
                        help="go on although run.json records another trainer version (or none: before "
                             "versioning); run.json then records the change and the id it applies from")


def run(args) -> int:
    from search.session import Session
    changes = {name: getattr(args, name) for name in args._settings}
    session = Session.resume(args.run_dir, allow_trainer_change=args.allow_trainer_change, **changes)
    return session.run_from_cli(args.quiet)
