"""reid-harness: privacy, generative recall and utility benchmarks for synthetic video generators."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("reid-harness")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

from harness.hookspecs import hookimpl  # noqa: E402  (re-exported for plugin authors)

__all__ = ["__version__", "hookimpl"]
