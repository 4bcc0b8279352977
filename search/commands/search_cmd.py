"""`evonorm search`: run an evolutionary search into a run directory.

Defaults (no flags): a real search on this machine with a local Ray instance,
one CPU worker per core (one per GPU when there are GPUs), Fashion-MNIST, the
three proxies (300 steps each, the evaluators' default), `batch` mode,
population 16, tournament 4, budget 120 records (rejected proposals included;
about an hour on 2 CPU cores, where a trained candidate takes minutes), into
results/<timestamp>-<mode>-s<seed>.
Flags override a `--config FILE.toml`, which overrides the defaults. The flags
come from the settings in `search.config`; the run itself is `search.session`.
"""
from __future__ import annotations


def add_arguments(parser):
    from search.config import add_flags
    parser.add_argument("--config", metavar="FILE.toml", help="TOML file with any of the settings below")
    parser.set_defaults(_settings=add_flags(parser))
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def run(args) -> int:
    from search.config import build_config, load_toml
    from search.session import Session
    overrides = {name: getattr(args, name) for name in args._settings}
    config = build_config(load_toml(args.config) if args.config else {}, overrides)
    return Session.start(config).run_from_cli(args.quiet)
