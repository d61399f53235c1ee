"""What the GPU kit carries to the device machine: the `serve` and `client` extras of pyproject.toml
(the web stack `dhrd serve` imports, and httpx, which the kit's clients use), less what the device
image already has (torch with CUDA, transformers). Derived, not a hand list: a dependency added to the
`serve` extra travels with the kit without anyone editing the wheel script.

    python -m loadtest.gpu.deps        # one requirement per line, for `pip download` / `pip install`
"""
from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
EXTRAS = ("serve", "client")
# The device image's own builds (CUDA torch; transformers 5.x): never carried, never replaced.
ON_DEVICE = {"torch", "transformers"}


def name_of(requirement: str) -> str:
    """The normalised distribution name of a requirement string ("uvicorn[standard]>=0.29" → "uvicorn")."""
    return re.split(r"[\s\[<>=!~;@]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def requirements(pyproject: Path = PYPROJECT) -> list[str]:
    """The kit's requirement strings, markers kept, in pyproject order, without duplicates by name."""
    project = tomllib.loads(pyproject.read_text())["project"]
    out: dict[str, str] = {}
    for extra in EXTRAS:
        for req in project["optional-dependencies"][extra]:
            if name_of(req) not in ON_DEVICE:
                out.setdefault(name_of(req), req)
    return list(out.values())


if __name__ == "__main__":
    sys.stdout.write("".join(r + "\n" for r in requirements()))
