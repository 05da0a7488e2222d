"""Prints the package sources of pip's configuration as `uv pip install` options.

    pip config list | python scripts/pip_sources.py
    # --find-links /opt/wheels --constraint /etc/xdg/pip/constraints.txt --extra-index-url https://...

uv does not read pip's configuration files or `PIP_*` variables, so a machine that points pip at a local CPU build of
torch (find-links, an extra index) would otherwise get PyPI's default build from uv. Read from `pip config list`:
`index-url` (the first one listed wins: the environment's over the files'), `extra-index-url`, `find-links` and
`constraint` (each value once, in the order listed; pip separates values by spaces, so none holds one). Nothing
configured prints nothing.
"""

from __future__ import annotations

import ast
import sys

#: pip's option names and the `uv pip install` options that take the same values.
OPTIONS = {"index-url": "--index-url", "extra-index-url": "--extra-index-url", "find-links": "--find-links",
           "constraint": "--constraint"}


def uv_options(config_lines: list[str]) -> list[str]:
    """The uv options for the lines of `pip config list` (`section.name='value'`, values separated by spaces)."""
    pairs: list[tuple[str, str]] = []
    for line in config_lines:
        key, _, value = line.strip().partition("=")
        option = OPTIONS.get(key.rpartition(".")[2])
        if option is None or not value:
            continue
        for item in ast.literal_eval(value).split():
            repeated = (option, item) in pairs or (option == "--index-url" and any(o == option for o, _ in pairs))
            if not repeated:
                pairs.append((option, item))
    return [word for pair in pairs for word in pair]


if __name__ == "__main__":
    print(" ".join(uv_options(sys.stdin.readlines())))
