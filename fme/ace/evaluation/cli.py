"""The command line of the rollout entry points (``fme.ace.evaluate``, ``fme.ace.inference``)."""

import argparse
import sys
from typing import TypeVar

from fme.core.config_loading import (
    ConfigError,
    apply_overrides,
    from_dict_strict,
    load_yaml,
)
from fme.core.process_resources import configure_process

ConfigT = TypeVar("ConfigT")


def config_from_command_line(
    argv: list[str] | None, *, prog: str, what: str, config_type: type[ConfigT]
) -> ConfigT:
    """``CONFIG.yaml [--override key=value ...]`` loaded strictly as ``config_type``.

    Sets up the process first (threads, signals). A bad config prints
    ``config error: ...`` and exits with status 2 before anything runs.

    Args:
        argv: the arguments (None: ``sys.argv``).
        prog: the command, for ``--help``.
        what: the kind of YAML, for ``--help`` (e.g. ``evaluator``).
        config_type: the config dataclass.
    """
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("config", help=f"{what} YAML")
    parser.add_argument("--override", nargs="*", default=[])
    args = parser.parse_args(argv)
    try:
        configure_process()
        data = apply_overrides(load_yaml(args.config), args.override)
        return from_dict_strict(config_type, data, path="config")
    except (ConfigError, ValueError) as err:
        print(f"config error: {err}", file=sys.stderr)
        sys.exit(2)
