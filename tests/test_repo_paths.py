"""No tracked file names a path of one machine (a home or workspace folder).

Data is found through options and ``TASE_LOSS_DATA`` (default ``../shared/data`` beside
the repository); results record paths relative to the repository. An absolute home or
workspace path in a tracked file works on one machine only, so it fails here.
"""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SELF = Path(__file__).resolve().relative_to(ROOT).as_posix()

# An absolute path into a home or workspace folder, e.g. /work/..., /home/..., /root/...,
# /Users/... (not when it continues a relative path such as runs/work/), or C:\Users.
MACHINE_PATH = re.compile(r"(?<![\w.\-/])/(?:work|home|root|Users)/|\b[A-Za-z]:(?:\\{1,2}|/)Users\b")


def _tracked_files() -> list[str]:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=False
    )
    if listed.returncode != 0:
        pytest.skip(f"not a git checkout: {listed.stderr.decode(errors='replace').strip()}")
    return [name for name in listed.stdout.decode().split("\0") if name]


@pytest.mark.parametrize(
    "text, is_machine_path",
    [
        ("--data /work/shared/data/cifar10_lt_r100.npz", True),
        ('"output_dir": "/home/me/runs/x"', True),
        ("cache in /root/.cache", True),
        ("(/Users/me/data)", True),
        ('"C:\\\\Users\\\\me\\\\data"', True),
        ("C:/Users/me", True),
        ("--data ../shared/data/cifar10_lt_r100.npz", False),
        ("--output runs/cifar60_s012/jobs/ntxent_seed0", False),
        ("see docs/work/notes and src/home/x", False),
        ("~/.cache/tase-loss-bench", False),
    ],
)
def test_the_pattern_tells_machine_paths_from_relative_ones(text, is_machine_path):
    assert bool(MACHINE_PATH.search(text)) is is_machine_path


def test_no_tracked_text_file_names_a_machine_path():
    found = []
    files = _tracked_files()
    assert files, "git ls-files listed nothing"
    for name in files:
        if name == SELF:  # its pattern examples above
            continue
        path = ROOT / name
        if not path.is_file():  # deleted in the work tree, not yet in the index
            continue
        data = path.read_bytes()
        if b"\0" in data:  # binary
            continue
        text = data.decode("utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), start=1):
            if MACHINE_PATH.search(line):
                found.append(f"{name}:{number}: {line.strip()[:160]}")
    assert not found, "paths of one machine (use an option, TASE_LOSS_DATA or a repository-relative path):\n" + (
        "\n".join(found)
    )
