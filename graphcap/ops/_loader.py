"""Build-once loader of graphcap's C++ custom ops.

The ops in ``graphcap/ops/csrc/`` (shipped inside the package, so an installed
wheel can build them too) are compiled with the machine's C++ compiler against
Paddle's headers (``paddle.utils.cpp_extension.load``) into a cache directory
chosen by ``build_root()``: ``$GRAPHCAP_BUILD_DIR`` if set; else
``<repo>/.graphcap_build`` when graphcap runs from a source checkout; else a
per-user cache (``$XDG_CACHE_HOME/graphcap`` or ``~/.cache/graphcap``), never
site-packages. The build directory name carries a hash of the sources, the
Paddle version and install location, the Python version and whether CUDA
sources are included, so unchanged sources are never rebuilt: a later process
imports the cached ``.so`` directly (about 0.1 s). ``make op``
(``python -m graphcap.ops.build``) builds ahead of time; the first
``load_ops()`` in a process builds only when the cached library is missing.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType

from graphcap.errors import OpBuildError

log = logging.getLogger(__name__)

EXTENSION_NAME = "graphcap_ops"
# The directory of the ``graphcap`` package: <repo>/graphcap in a checkout,
# .../site-packages/graphcap once installed.
_PACKAGE_DIR = Path(__file__).resolve().parents[1]
CSRC_DIR = Path(__file__).resolve().parent / "csrc"
# Written into each build directory: which Paddle install the build belongs to,
# so that one shared cache can prune only its own environment's stale builds.
_ENVIRONMENT_FILE = "environment.json"
_CXX_SOURCES = ("build_sampling_params.cc",)
_CUDA_SOURCES = ("build_sampling_params.cu",)
_HEADERS = ("build_sampling_params.h",)

# Reentrant: load_ops() holds it while build() stores the module it compiled.
_LOCK = threading.RLock()
_MODULE: ModuleType | None = None


def source_checkout(package_dir: Path) -> Path | None:
    """The repository root when ``package_dir`` (the ``graphcap`` package) lies in a source checkout, else None.

    A checkout is recognised by ``pyproject.toml`` next to the package
    directory; an installed package sits in site-packages, which has none.
    """
    root = package_dir.parent
    return root if (root / "pyproject.toml").is_file() else None


def user_cache_dir(environ: Mapping[str, str]) -> Path:
    """graphcap's per-user cache: ``$XDG_CACHE_HOME/graphcap``, else ``~/.cache/graphcap``."""
    xdg = environ.get("XDG_CACHE_HOME", "")
    # The XDG spec says a relative $XDG_CACHE_HOME is invalid and must be ignored.
    if xdg and Path(xdg).expanduser().is_absolute():
        return Path(xdg).expanduser() / "graphcap"
    home = Path(environ["HOME"]) if environ.get("HOME") else Path.home()
    return home / ".cache" / "graphcap"


def resolve_build_root(package_dir: Path, environ: Mapping[str, str]) -> Path:
    """The build cache for a graphcap package at ``package_dir`` under the environment ``environ``.

    ``$GRAPHCAP_BUILD_DIR`` if set; else ``<repo>/.graphcap_build`` for a
    source checkout; else ``user_cache_dir(environ)``. An installed package
    never builds into site-packages: it may be read-only or shared between
    users, and ``pip uninstall`` would leave the build behind.
    """
    explicit = environ.get("GRAPHCAP_BUILD_DIR")
    if explicit:
        return Path(explicit).expanduser().resolve()
    checkout = source_checkout(package_dir)
    if checkout is not None:
        return checkout / ".graphcap_build"
    return user_cache_dir(environ)


def build_root() -> Path:
    """The cache directory that holds every build, for this process (see ``resolve_build_root``)."""
    return resolve_build_root(_PACKAGE_DIR, os.environ)


def _with_cuda() -> bool:
    import paddle

    return bool(paddle.is_compiled_with_cuda())


def _sources(with_cuda: bool) -> list[Path]:
    names = _CXX_SOURCES + (_CUDA_SOURCES if with_cuda else ())
    return [CSRC_DIR / name for name in names]


def _environment(with_cuda: bool) -> dict[str, str]:
    # The Paddle install location is part of the key: the per-user cache is
    # shared by every virtual environment of the user, and a library built
    # against one Paddle (CPU, GPU or XPU wheel) must not be loaded by another.
    import paddle

    return {
        "paddle": paddle.__version__,
        "paddle_dir": str(Path(paddle.__file__).resolve().parent),
        "python": ".".join(map(str, sys.version_info[:2])),
        "cuda": str(with_cuda),
    }


def source_hash(with_cuda: bool | None = None) -> str:
    """Hash of everything the built library depends on: sources, headers, the Paddle install, Python version."""
    cuda = _with_cuda() if with_cuda is None else with_cuda
    digest = hashlib.sha256()
    for path in _sources(cuda) + [CSRC_DIR / name for name in _HEADERS]:
        if not path.exists():
            raise OpBuildError(
                f"op source {path} is missing; it ships inside the graphcap package "
                "(graphcap/ops/csrc/): restore it from the repository, or reinstall graphcap"
            )
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    digest.update(json.dumps(_environment(cuda), sort_keys=True).encode())
    return digest.hexdigest()[:16]


def build_dir(with_cuda: bool | None = None) -> Path:
    """Where the library for the current sources lives (created on build)."""
    return build_root() / f"{EXTENSION_NAME}_{source_hash(with_cuda)}"


def library_path(with_cuda: bool | None = None) -> Path:
    """Path of the built shared library for the current sources (may not exist yet)."""
    return build_dir(with_cuda) / EXTENSION_NAME / f"{EXTENSION_NAME}.so"


def _find_compiler() -> str:
    candidates = [os.environ.get("CXX", ""), "c++", "g++", "clang++"]
    for name in candidates:
        if name and shutil.which(name.split()[0]):
            return name
    raise OpBuildError(
        "no C++ compiler found (tried $CXX, c++, g++, clang++); install g++ "
        "(e.g. `apt-get install g++`) or set CXX, then run `python -m graphcap.ops.build` (`make op` in a checkout)"
    )


def _read_environment(directory: Path) -> dict[str, str] | None:
    try:
        return json.loads((directory / _ENVIRONMENT_FILE).read_text())
    except (OSError, ValueError):
        return None


def _is_stale(directory: Path, environment: dict[str, str]) -> bool:
    recorded = _read_environment(directory)
    if recorded is None:
        # Made by an older graphcap, before builds recorded their environment;
        # its hash scheme is gone, so nothing will ever load it again.
        return True
    if recorded == environment:
        return True  # this environment's build of older sources
    # Another environment's build stays (it may be in use) unless the Paddle
    # it was built against is gone, i.e. its virtual environment was deleted.
    return not Path(recorded.get("paddle_dir", "")).is_dir()


def _remove_stale_builds(*, keep: Path, environment: dict[str, str]) -> None:
    # Builds of older sources are never loaded again (the hash moved on); a
    # process that still has one mapped keeps working after the unlink.
    for old in build_root().glob(f"{EXTENSION_NAME}_*"):
        if old.is_dir() and old != keep and _is_stale(old, environment):
            shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    # Two processes (pytest workers, make -j) may race to build the same
    # hash; the lock makes the second one wait and then reuse the first's .so.
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build(*, force: bool = False, verbose: bool = False) -> tuple[Path, float]:
    """Compile the ops unless the library for the current sources exists.

    Returns ``(library path, seconds spent compiling)``; seconds is 0.0 when
    the cached library was reused. Raises ``OpBuildError`` when no compiler is
    found or compilation fails.
    """
    global _MODULE
    with_cuda = _with_cuda()
    target = library_path(with_cuda)
    directory = build_dir(with_cuda)
    root = build_root()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OpBuildError(
            f"cannot create the op build cache {root} ({exc}); set GRAPHCAP_BUILD_DIR to a writable directory"
        ) from exc
    with _file_lock(root / f".{EXTENSION_NAME}.lock"):
        if target.exists() and not force:
            return target, 0.0
        _find_compiler()
        from paddle.utils import cpp_extension

        environment = _environment(with_cuda)
        _remove_stale_builds(keep=directory, environment=environment)
        directory.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        try:
            # load() compiles and also registers the ops in this process; keep
            # its module so load_ops() does not register them a second time.
            module = cpp_extension.load(
                name=EXTENSION_NAME,
                sources=[str(p) for p in _sources(with_cuda)],
                extra_cxx_cflags=["-O2", f"-I{CSRC_DIR}"],
                extra_cuda_cflags=["-O2", f"-I{CSRC_DIR}"],
                build_directory=str(directory),
                verbose=verbose,
            )
        except Exception as exc:  # compiler errors surface as RuntimeError / OSError
            raise OpBuildError(
                f"building {EXTENSION_NAME} from {CSRC_DIR} failed ({exc}); "
                "rerun `python -m graphcap.ops.build --verbose` to see the compiler output"
            ) from exc
        seconds = time.perf_counter() - started
        if not target.exists():
            raise OpBuildError(
                f"the build finished but {target} is missing; remove {directory} and rerun "
                "`python -m graphcap.ops.build` (`make op` in a checkout)"
            )
        (directory / _ENVIRONMENT_FILE).write_text(json.dumps(environment, indent=2) + "\n")
        log.info("built %s in %.1f s into %s", EXTENSION_NAME, seconds, directory)
        with _LOCK:
            if _MODULE is None:
                _MODULE = module
        return target, seconds


def load_ops() -> ModuleType:
    """The module of compiled ops, loaded once per process (building first if the cache is empty)."""
    global _MODULE
    with _LOCK:
        if _MODULE is not None:
            return _MODULE
        target, _ = build()
        if _MODULE is not None:  # build() just compiled and registered it
            return _MODULE
        from paddle.utils.cpp_extension import extension_utils

        # Paddle logs "using custom operator only" at INFO on every load of an
        # ops-only library; it is not news, so it is held back for this call.
        paddle_logger = logging.getLogger("utils.cpp_extension")
        level = paddle_logger.level
        paddle_logger.setLevel(logging.WARNING)
        try:
            # Imports the cached .so and registers its ops; no compiler runs.
            module = extension_utils._import_module_from_library(EXTENSION_NAME, str(target.parent))
        except Exception as exc:
            raise OpBuildError(
                f"loading {target} failed ({exc}); remove {target.parent.parent} and rerun "
                "`python -m graphcap.ops.build` (`make op` in a checkout)"
            ) from exc
        finally:
            paddle_logger.setLevel(level)
        _MODULE = module
        return module
