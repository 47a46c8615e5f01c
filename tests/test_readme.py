"""Every Python block of README.md and of the docs under docs/ runs as the doc says.

A block stands alone unless the paragraph right above it says which block it continues,
as a link to that block's section: ``Continues [the SimCLR loop above](#replace-nt-xent-in-a-simclr-loop)``.
A continuing block runs after the first Python block of the linked section (and whatever
that one continues); every block runs in a fresh namespace with only those, so a block
that uses a name it neither defines nor is said to inherit fails here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple, Optional

import pytest
import torch

REPOSITORY = Path(__file__).resolve().parent.parent
DOCUMENTS = [REPOSITORY / "README.md", *sorted((REPOSITORY / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
CONTINUES = re.compile(r"\bcontinues\s+\[[^\]]*\]\(#([\w-]+)\)", re.IGNORECASE)
HEADING = re.compile(r"^#+ (.+)$", re.MULTILINE)


class Block(NamedTuple):
    document: str
    number: int  # 1-based among the document's Python blocks
    code: str
    section: str  # anchor of the heading it sits under
    continues: Optional[str]  # anchor of the section whose first block it continues


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def paragraph_above(text: str, position: int) -> str:
    lines = text[:position].rstrip("\n").split("\n")
    paragraph: list[str] = []
    for line in reversed(lines):
        if not line.strip():
            break
        paragraph.insert(0, line)
    return " ".join(paragraph)


def python_blocks(path: Path) -> list[Block]:
    return blocks_of(path.read_text(encoding="utf-8"), str(path.relative_to(REPOSITORY)))


def blocks_of(text: str, document: str) -> list[Block]:
    headings = [(match.start(), anchor(match.group(1))) for match in HEADING.finditer(text)]
    blocks = []
    for match in FENCE.finditer(text):
        if match.group(1) != "python":
            continue
        section = next((name for start, name in reversed(headings) if start < match.start()), "")
        continued = CONTINUES.search(paragraph_above(text, match.start()))
        blocks.append(
            Block(
                document,
                len(blocks) + 1,
                match.group(2),
                section,
                continued.group(1) if continued else None,
            )
        )
    return blocks


def chain(block: Block, blocks: list[Block]) -> list[Block]:
    """The blocks to run, in order: what ``block`` continues (recursively), then ``block``."""
    if block.continues is None:
        return [block]
    named = [other for other in blocks if other.section == block.continues]
    assert named, f"{block.document} block {block.number} continues #{block.continues}, which has no Python block"
    assert named[0] is not block, f"{block.document} block {block.number} continues itself"
    return [*chain(named[0], blocks), block]


ALL_BLOCKS = [(block, blocks) for path in DOCUMENTS for blocks in [python_blocks(path)] for block in blocks]


@pytest.fixture(autouse=True)
def _in_scratch_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # blocks may write files (checkpoint.pt)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(
    "block,blocks", ALL_BLOCKS, ids=[f"{block.document}-{block.number}" for block, _ in ALL_BLOCKS]
)
def test_block_runs_as_the_doc_says(block, blocks):
    namespace = {"__name__": "doc_block"}
    for part in chain(block, blocks):
        exec(compile(part.code, f"{part.document} python block {part.number}", "exec"), namespace)


def test_the_blocks_this_test_relies_on_are_found():
    readme = python_blocks(REPOSITORY / "README.md")
    # SimCLR, MoCo + SimSiam, estimators, a fixed input estimate, checkpoints
    assert [block.continues for block in readme] == [
        None,
        "replace-nt-xent-in-a-simclr-loop",
        None,
        "replace-nt-xent-in-a-simclr-loop",
        "replace-nt-xent-in-a-simclr-loop",
    ]
    plugins = python_blocks(REPOSITORY / "docs" / "plugins.md")
    assert [block.continues for block in plugins] == [None, "rwsam", "rwsam", "rwsam"]


def test_a_block_without_its_continuation_fails():
    # The oracle for "stands alone": README's MoCo block alone lacks the SimCLR loop's names.
    moco = python_blocks(REPOSITORY / "README.md")[1]
    with pytest.raises(NameError):
        exec(compile(moco.code, "moco block alone", "exec"), {"__name__": "doc_block"})


def test_the_continuation_marker_is_parsed():
    text = "# Intro\n\n```python\nx = 1\n```\n\n## Use it\n\nContinues\n[the intro](#intro):\n\n```python\ny = x\n```\n"
    blocks = blocks_of(text, "probe.md")
    assert [(block.section, block.continues) for block in blocks] == [("intro", None), ("use-it", "intro")]
    assert [part.number for part in chain(blocks[1], blocks)] == [1, 2]


def test_the_swap_diff_has_the_line_counts_the_readme_states():
    text = (REPOSITORY / "README.md").read_text(encoding="utf-8")
    section = text.split("### The swap in an existing loop", 1)[1].split("\n#", 1)[0]
    stated = re.search(r"(\d+) added lines and (\d+) removed", section)
    assert stated, "the swap section states no line counts"
    diff = next(body for language, body in FENCE.findall(section) if language == "text")
    lines = diff.splitlines()
    counted = (sum(line.startswith("+ ") for line in lines), sum(line.startswith("- ") for line in lines))
    assert counted == (int(stated.group(1)), int(stated.group(2)))
