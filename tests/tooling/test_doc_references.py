"""Line numbers and example output in the docs stay true.

A doc may cite `FILE:LINE` in two checked forms only:
- make's failure line, `[Makefile:N: TARGET]`: line N of the Makefile must define TARGET;
- inside an example block of `dmlocal preview` output, introduced by a comment
  `<!-- preview example: FILE `OLD` => `NEW`; ... -->` (or `(no edit)`): the test makes those
  edits in a copy of the stack (with its docs, README, Makefile and CI config), runs the real
  `dmlocal preview` there, and the block must be a contiguous run of what it prints on stderr.
Any other `FILE:LINE` in README.md or docs/*.md fails, so a new one is either checked or not
written. Real: the stack, the docs and dmlocal of this checkout. Nothing is emulated.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.conftest import REPO, copy_stack, run_dmlocal

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
REFERENCE = re.compile(
    r"(?<![\w/.-])(Makefile|[\w./-]+\.(?:yaml|yml|py|sh|md|conf|service|timer|path|schema|txt))"
    r":(\d+)\b"
)
MAKE_FAILURE = re.compile(r"\[Makefile:(\d+): ([\w-]+)\]")
EXAMPLE = re.compile(r"^<!-- preview example: ([^\n]*) -->\n```[a-z]*\n(.*?)\n```", re.M | re.S)
EDIT = re.compile(r"([\w./-]+) `([^`]+)` => `([^`]*)`")


def examples() -> list[tuple[str, str, str]]:
    """(doc, edits, block) for every preview example in the docs."""
    return [
        (doc.relative_to(REPO).as_posix(), match[1], match[2])
        for doc in DOCS
        for match in EXAMPLE.finditer(doc.read_text())
    ]


def test_every_line_reference_is_in_a_checked_form():
    unchecked = []
    for doc in DOCS:
        text = doc.read_text()
        checked = [m.span() for m in MAKE_FAILURE.finditer(text)]
        checked += [m.span(2) for m in EXAMPLE.finditer(text)]
        for ref in REFERENCE.finditer(text):
            if not any(start <= ref.start() < end for start, end in checked):
                line = text.count("\n", 0, ref.start()) + 1
                unchecked.append(f"{doc.relative_to(REPO)}:{line}: {ref[0]}")
    assert unchecked == [], (
        "line references the tests cannot keep true (cite make's failure line or a preview "
        f"example, or no line): {unchecked}"
    )


def test_make_failure_lines_name_the_target_at_that_line():
    makefile = (REPO / "Makefile").read_text().splitlines()
    cited = [(doc, m) for doc in DOCS for m in MAKE_FAILURE.finditer(doc.read_text())]
    assert cited, "the docs cite make's failure line; the pattern no longer finds it"
    for doc, match in cited:
        line, target = int(match[1]), match[2]
        assert makefile[line - 1].startswith(f"{target}:"), (
            f"{doc.relative_to(REPO)} cites {match[0]}, but Makefile:{line} is "
            f"{makefile[line - 1]!r}; `{target}:` is at Makefile:"
            f"{next(i for i, text in enumerate(makefile, 1) if text.startswith(target + ':'))}"
        )


def test_the_docs_have_preview_examples():
    # The next test is parametrized over them; this keeps it from passing on none.
    assert len(examples()) >= 4


@pytest.mark.parametrize(
    ("doc", "edits", "block"),
    [pytest.param(*example, id=f"{example[0]}-{n}") for n, example in enumerate(examples(), 1)],
)
def test_preview_example_is_what_preview_prints(tmp_path, doc, edits, block):
    stack = copy_stack(tmp_path)
    shutil.copytree(REPO / "docs", stack / "docs")
    shutil.copytree(REPO / ".circleci", stack / ".circleci")
    for name in ("README.md", "Makefile"):
        shutil.copy(REPO / name, stack / name)
    parsed = EDIT.findall(edits)
    assert parsed or edits == "(no edit)", f"{doc}: cannot read the edits {edits!r}"
    for file, old, new in parsed:
        path = Path(stack / file)
        text = path.read_text()
        assert text.count(old) == 1, f"{doc}: `{old}` must occur once in {file}"
        path.write_text(text.replace(old, new))

    printed = run_dmlocal("preview", "deployment.yaml", cwd=stack).stderr.splitlines()
    wanted = block.splitlines()
    starts = [i for i, line in enumerate(printed) if line == wanted[0]]
    assert any(printed[i : i + len(wanted)] == wanted for i in starts), (
        f"{doc}: the example after `{edits}` is not what preview prints now:\n" + "\n".join(printed)
    )
