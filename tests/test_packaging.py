"""Packaging: the sdist and the wheel carry the top-level ``csrc/``, the JIT builds from an
installed wheel, and the package's imports have no cycle."""

import ast
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "tase_loss"
CSRC = sorted(path.relative_to(REPO / "csrc").as_posix() for path in (REPO / "csrc").rglob("*") if path.is_file())
WHEEL_CSRC = "tase_loss/ops/csrc/"


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
    with tarfile.open(sdist) as archive:
        files = [member.name for member in archive.getmembers() if member.isfile()]
    in_sdist = sorted(name.split("/csrc/", 1)[1] for name in files if "/csrc/" in name)
    assert in_sdist == CSRC
    assert not [name for name in files if "/tase_loss/ops/csrc/" in name], "the sdist holds csrc/ once"
    _run(
        sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
        "-w", str(tmp_path / "wheels"), str(sdist), cwd=tmp_path,
    )  # fmt: skip
    (wheel,) = (tmp_path / "wheels").glob("tase_loss-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert sorted(name[len(WHEEL_CSRC) :] for name in names if name.startswith(WHEEL_CSRC)) == CSRC
    assert not [name for name in names if "csrc/" in name and not name.startswith(WHEEL_CSRC)]
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
        "from tase_loss.ops import _build, _extension\n"
        f"assert tase_loss.__file__.startswith({str(site)!r}), tase_loss.__file__\n"
        # the JIT compiles the wheel's copy of csrc/, not this checkout's
        f"assert str(_build.source_root()) == {str(site / WHEEL_CSRC.rstrip('/'))!r}, _build.source_root()\n"
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


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_modules(path: Path, modules: set) -> set:
    """The modules of ``tase_loss`` that ``path`` imports at run time, anywhere in the file
    (lazy imports inside functions count; ``if TYPE_CHECKING:`` blocks do not)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            # `from package import module` imports the module; other names come from the package.
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        found.update(target for target in targets if target in modules and target != name)
    return found


def test_the_package_has_no_import_cycle():
    files = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {name: _imported_modules(path, set(files)) for name, path in files.items()}
    assert "tase_loss.ops.fused" in graph["tase_loss.ops"], "the checker sees no edges"
    cycles = []
    state = {}  # 1: on the current path, 2: done

    def visit(name, path):
        state[name] = 1
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, cycles


def test_the_ops_imports_point_one_way():
    """Entry point -> implementations -> shared helpers: no implementation imports the entry point."""
    files = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    layers = {
        "tase_loss.ops": 0,
        "tase_loss.ops.fused": 1,
        "tase_loss.ops.chunked": 1,
        "tase_loss.ops.reference": 1,
        "tase_loss.ops._extension": 2,
        "tase_loss.ops._common": 2,
        "tase_loss.ops._build": 3,
    }
    assert set(layers) == {name for name in files if name.startswith("tase_loss.ops")}
    for name, layer in layers.items():
        for target in _imported_modules(files[name], set(files)):
            assert layers.get(target, 4) > layer, f"{name} imports {target}"
