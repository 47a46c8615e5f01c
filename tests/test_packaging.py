"""The wheel built from the sdist ships the C++ sources, and the JIT build works from it."""

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CSRC = sorted(str(path.relative_to(REPO)) for path in (REPO / "tase_loss" / "csrc").rglob("*") if path.is_file())


def _run(*command: str, cwd: Path, env: dict | None = None) -> str:
    completed = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-4000:]
    return completed.stdout + completed.stderr


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="needs a C++ compiler")
def test_wheel_from_the_sdist_ships_csrc_and_jit_builds_from_the_installed_copy(tmp_path):
    assert CSRC, "no C++ sources found in the checkout"
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", "build", "*.so", "__pycache__", "*.egg-info"))
    # The sdist first (what PyPI would hold), then the wheel from it, both without
    # build isolation: the test environment already has setuptools and torch.
    _run(sys.executable, "setup.py", "-q", "sdist", "--dist-dir", str(tmp_path / "dist"), cwd=source)
    (sdist,) = (tmp_path / "dist").glob("tase_loss-*.tar.gz")
    _run(
        sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
        "-w", str(tmp_path / "wheels"), str(sdist), cwd=tmp_path,
    )  # fmt: skip
    (wheel,) = (tmp_path / "wheels").glob("tase_loss-*.whl")
    shipped = sorted(name for name in zipfile.ZipFile(wheel).namelist() if "/csrc/" in name)
    assert shipped == CSRC
    assert not [name for name in zipfile.ZipFile(wheel).namelist() if name.endswith(".so")]

    site = tmp_path / "site"
    _run(sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel), cwd=tmp_path)
    # -S: no .pth files, so an editable install of this checkout (and its in-place build)
    # cannot be what gets imported; the installed copy and site-packages (torch) only.
    jit = tmp_path / "jit"
    paths = [str(site), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    environment = {
        **os.environ,
        "TASE_LOSS_JIT": "1",
        "TASE_LOSS_REQUIRE_EXT": "1",
        "TASE_LOSS_JIT_CACHE": str(jit),
    }
    environment.pop("TASE_LOSS_DISABLE_EXT", None)
    output = _run(
        sys.executable,
        "-S",
        "-c",
        f"import sys; sys.path[:0] = {paths!r}\n"
        "import torch, tase_loss\n"
        "from tase_loss import _extension\n"
        f"assert tase_loss.__file__.startswith({str(site)!r}), tase_loss.__file__\n"
        "x = torch.randn(600, 16, requires_grad=True)\n"
        "loss = tase_loss.nt_xent_loss(x[:300], x[300:])\n"
        "loss.backward()\n"
        "assert _extension.has_ext()\n"
        f"assert _extension._module.__file__.startswith({str(jit)!r}), _extension._module.__file__\n"
        "print('fused op loaded')\n",
        cwd=tmp_path,
        env=environment,
    )
    assert "compiling the fused op" in output and "fused op loaded" in output
    assert list(jit.rglob("*.so")), "the JIT build left no library in its cache"
