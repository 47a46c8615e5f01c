"""Every Python block of README.md and docs/plugins.md runs as written.

README.md's blocks stand alone (each builds its toy data and networks) and run top to
bottom in one namespace, as a reader reads them. docs/plugins.md shows recipes for a
training loop you already have; they run in the namespace of ``readme_scaffold.py``,
which defines that loop's names (``dataset``, ``loader``, ``backbone``, ``head``,
``model``, ``epochs``, ...), on toy data.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

REPOSITORY = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def python_blocks(path: Path) -> list[str]:
    return BLOCK.findall(path.read_text(encoding="utf-8"))


def _run(blocks: list[str], namespace: dict, name: str) -> None:
    for number, block in enumerate(blocks, start=1):
        code = compile(block, f"{name} python block {number}", "exec")
        exec(code, namespace)


@pytest.fixture(autouse=True)
def _in_scratch_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # blocks may write files (checkpoint.pt)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def test_readme_python_blocks_run_as_written():
    blocks = python_blocks(REPOSITORY / "README.md")
    assert len(blocks) == 5  # SimCLR, MoCo + SimSiam, estimators, a fixed input estimate, checkpoints
    _run(blocks, {"__name__": "readme"}, "README.md")


def test_readme_plugins_recipes_run_in_the_documented_scaffold():
    import readme_scaffold

    blocks = python_blocks(REPOSITORY / "docs" / "plugins.md")
    assert blocks
    _run(blocks, readme_scaffold.namespace(), "docs/plugins.md")
