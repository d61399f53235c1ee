"""One command per measuring tool, its measurements as modes: `python -m loadtest.<tool> MODE [flags]`
runs that mode's own `main(argv)` with the flags that follow MODE (each mode keeps its flags and its
output; `python -m loadtest.<tool> MODE --help` lists them). A mode's module is imported only when
chosen, so `--help` never loads torch."""
from __future__ import annotations

import argparse
import importlib
import sys


def dispatch(tool: str, doc: str, modes: dict[str, tuple[str, str]], argv: list[str] | None = None) -> int:
    """`modes`: name -> (module, one-line help). Runs `module.main(rest)` for `argv = [name, *rest]`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = f"python -m {tool}"
    if argv and argv[0] in modes:
        module = importlib.import_module(modes[argv[0]][0])
        sys.argv[0] = f"{prog} {argv[0]}"  # the mode's usage line names the command; argv[1:] stays as typed
        return module.main(argv[1:]) or 0
    parser = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", metavar="MODE", required=True)
    for name, (_, help_) in modes.items():
        sub.add_parser(name, help=help_, add_help=False)
    parser.parse_args(argv[:1])  # --help, or an error naming the modes
    return 2
