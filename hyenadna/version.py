"""The package version, read once from the installed distribution's metadata (pyproject.toml).

pyproject.toml is the one place the version is written; `hyenadna.__version__` and
``hyenadna --version`` both come from here. Running from a source tree that was never
installed gives ``0+unknown`` rather than a made-up number.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__: str = version("hyenadna")
except PackageNotFoundError:  # a source checkout on sys.path that pip never installed
    __version__ = "0+unknown"
