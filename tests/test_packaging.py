"""graphcap as an installed package: what the wheel ships, where an install builds the op, a missing Paddle.

A non-editable install has no repository around it, so the op's sources must
ship inside the wheel, the op must build into a per-user cache (never into
site-packages), and ``import graphcap`` without Paddle must say which wheel to
install (Paddle is an extra, not a hard dependency).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from graphcap.ops import _loader
from graphcap.ops._loader import CSRC_DIR, resolve_build_root, source_checkout, user_cache_dir

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "graphcap"


def _copy_buildable_tree(destination: Path) -> Path:
    # Build from a copy holding only what the build reads (top-level files and
    # the package): an in-tree build would reuse the repo's build/lib, where a
    # file from an earlier build could hide a package-data rule that no longer
    # matches, and it would write build/ and *.egg-info into the work tree.
    destination.mkdir()
    for entry in REPO.iterdir():
        if entry.is_file() and not entry.name.startswith("."):
            shutil.copy2(entry, destination / entry.name)
    shutil.copytree(PACKAGE, destination / "graphcap", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return destination


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel of this checkout, built offline with the test environment's setuptools."""
    root = tmp_path_factory.mktemp("wheel")
    source = _copy_buildable_tree(root / "src")
    out = root / "dist"
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "-q", "-w", str(out), str(source)],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )
    seconds = time.perf_counter() - started
    assert done.returncode == 0, f"pip wheel failed after {seconds:.1f} s:\n{done.stdout}\n{done.stderr}"
    wheels = sorted(out.glob("graphcap-*.whl"))
    assert len(wheels) == 1, f"expected one graphcap wheel in {out}, found {[w.name for w in wheels]}"
    return wheels[0]


def test_wheel_ships_op_sources_and_model_weights(wheel: Path):
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = sorted(p for p in CSRC_DIR.iterdir() if p.suffix in (".cc", ".cu", ".h"))
    assert {p.suffix for p in sources} == {".cc", ".cu", ".h"}, f"op sources in {CSRC_DIR}: {sources}"
    for path in sources:
        assert f"graphcap/ops/csrc/{path.name}" in names, f"{path.name} is missing from {wheel.name}"
    # Every source the loader compiles is among them, so an installed op can build.
    for name in _loader._CXX_SOURCES + _loader._CUDA_SOURCES + _loader._HEADERS:
        assert f"graphcap/ops/csrc/{name}" in names
    assert "graphcap/models/tiny_lm.pdparams" in names
    assert "graphcap/models/tiny_lm.json" in names
    assert "graphcap/ops/_loader.py" in names
    # Nothing outside the package (no top-level csrc/, tests or benchmarks).
    dist_info = "-".join(wheel.name.split("-")[:2]) + ".dist-info"
    assert {name.split("/")[0] for name in names} == {"graphcap", dist_info}


def test_wheel_requires_paddle_only_through_extras(wheel: Path):
    archive = zipfile.ZipFile(wheel)
    metadata = archive.read(next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    requires = [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    paddle = [req for req in requires if req.lower().startswith("paddlepaddle")]
    assert paddle, f"no paddlepaddle requirement at all in {requires}"
    # A hard requirement would pull the CPU wheel on top of paddlepaddle-gpu/-xpu.
    assert all('extra == "cpu"' in req for req in paddle), paddle
    assert any(req.startswith("paddleformers") and 'extra == "paddleformers"' in req for req in requires), requires


def test_installed_package_builds_into_the_user_cache(tmp_path: Path):
    site_packages = tmp_path / "venv" / "lib" / "python3.11" / "site-packages"
    package = site_packages / "graphcap"
    package.mkdir(parents=True)
    home = tmp_path / "home"
    assert source_checkout(package) is None
    assert resolve_build_root(package, {"HOME": str(home)}) == home / ".cache" / "graphcap"
    xdg = tmp_path / "xdg"
    assert resolve_build_root(package, {"HOME": str(home), "XDG_CACHE_HOME": str(xdg)}) == xdg / "graphcap"
    # A relative $XDG_CACHE_HOME is invalid per the XDG spec and falls back to ~/.cache.
    assert user_cache_dir({"HOME": str(home), "XDG_CACHE_HOME": "relative/cache"}) == home / ".cache" / "graphcap"
    for environ in ({"HOME": str(home)}, {"HOME": str(home), "XDG_CACHE_HOME": str(xdg)}):
        assert site_packages not in resolve_build_root(package, environ).parents


def test_build_root_uses_the_user_cache_for_an_installed_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    package = tmp_path / "site-packages" / "graphcap"
    package.mkdir(parents=True)
    monkeypatch.setattr(_loader, "_PACKAGE_DIR", package)
    monkeypatch.delenv("GRAPHCAP_BUILD_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert _loader.build_root() == tmp_path / "cache" / "graphcap"


def test_build_root_in_a_checkout_and_with_the_override(tmp_path: Path):
    assert source_checkout(PACKAGE) == REPO
    assert resolve_build_root(PACKAGE, {"HOME": str(tmp_path)}) == REPO / ".graphcap_build"
    override = tmp_path / "builds"
    for package in (PACKAGE, tmp_path / "site-packages" / "graphcap"):
        assert resolve_build_root(package, {"GRAPHCAP_BUILD_DIR": str(override)}) == override.resolve()


def test_stale_builds_pruned_only_for_this_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # The user cache is shared by every venv of the user: a build must not
    # delete another live environment's library, only its own older ones.
    monkeypatch.setenv("GRAPHCAP_BUILD_DIR", str(tmp_path))
    live_paddle = tmp_path / "other-venv-paddle"
    live_paddle.mkdir()
    mine = {"paddle": "3.3.1", "paddle_dir": "/venv-a/paddle", "python": "3.11", "cuda": "False"}

    def make(name: str, environment: dict[str, str] | None) -> Path:
        directory = tmp_path / f"{_loader.EXTENSION_NAME}_{name}"
        directory.mkdir()
        if environment is not None:
            (directory / _loader._ENVIRONMENT_FILE).write_text(json.dumps(environment))
        return directory

    keep = make("current", mine)
    older = make("older", mine)
    legacy = make("legacy", None)
    other_live = make("otherlive", {**mine, "paddle_dir": str(live_paddle), "cuda": "True"})
    other_gone = make("othergone", {**mine, "paddle_dir": str(tmp_path / "deleted-venv")})
    _loader._remove_stale_builds(keep=keep, environment=mine)
    assert sorted(p.name for p in tmp_path.glob(f"{_loader.EXTENSION_NAME}_*")) == sorted([keep.name, other_live.name])
    assert not older.exists() and not legacy.exists() and not other_gone.exists()


def test_import_without_paddle_names_the_wheels(tmp_path: Path):
    fake = tmp_path / "fake" / "paddle"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('raise ImportError("simulated: libpaddle.so not found")\n')
    probe = (
        "import json\n"
        "try:\n"
        "    import graphcap\n"
        "except ImportError as exc:\n"
        "    print(json.dumps({'message': str(exc), 'cause': repr(exc.__cause__)}))\n"
        "else:\n"
        "    print(json.dumps({'message': None, 'file': graphcap.__file__}))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake.parent), str(REPO)])}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["message"] is not None, f"graphcap imported despite the broken paddle: {result}"
    for wheel_name in ("graphcap[cpu]", "paddlepaddle-gpu", "paddlepaddle-xpu", "CUDA", "XPU"):
        assert wheel_name in result["message"], f"{wheel_name!r} not in: {result['message']}"
    # Chained from the original error, whose text is also quoted in the message.
    assert "simulated: libpaddle.so not found" in result["cause"]
    assert "simulated: libpaddle.so not found" in result["message"]
