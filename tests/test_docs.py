"""The documentation cannot rot: every ```python block of docs/*.md runs, and the site builds.

A block that needs something the test environment does not have opts out with the marker
``<!-- docs-test: skip (why) -->`` on the line right before its opening fence; the reason is reported.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import subprocess
import sys

import jax
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = sorted((ROOT / "docs").glob("*.md"))
SKIP_MARKER = re.compile(r"<!--\s*docs-test:\s*skip\b(.*?)-->")
_FENCE = re.compile(r"^```(\w*)\s*$")


@dataclasses.dataclass(frozen=True)
class CodeBlock:
    line: int  # 1-based line of the opening fence
    code: str
    skip_reason: str | None


def python_blocks(text: str) -> list[CodeBlock]:
    """The ```python blocks of a Markdown text, in order, each with its opt-out reason if marked."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
        if end is None:
            raise ValueError(f"line {i + 1}: a code fence is never closed")
        if opening.group(1) == "python":
            marker = SKIP_MARKER.search(lines[i - 1]) if i > 0 else None
            reason = (marker.group(1).strip(" ()") or "marked skip") if marker else None
            blocks.append(CodeBlock(i + 1, "\n".join(lines[i + 1 : end]) + "\n", reason))
        i = end + 1
    return blocks


def test_python_blocks_are_found_and_skip_markers_honoured():
    text = (
        "intro\n```python\nx = 1\n```\n<!-- docs-test: skip (needs a TPU) -->\n```python\nboom()\n```\n"
        "```bash\nls\n```\n```python\ny = x + 1\n```\n"
    )
    blocks = python_blocks(text)
    assert [b.line for b in blocks] == [2, 6, 12]
    assert [b.skip_reason for b in blocks] == [None, "needs a TPU", None]
    assert blocks[2].code == "y = x + 1\n"
    with pytest.raises(ValueError, match="never closed"):
        python_blocks("```python\nx = 1\n")


def test_every_docs_page_has_a_runnable_example():
    """Guards the collection itself: if the fence syntax changed, the parametrised tests would silently vanish."""
    counted = {p.name: len(python_blocks(p.read_text())) for p in PAGES}
    assert counted["getting-started.md"] >= 4 and counted["metrics.md"] >= 3, counted


# Pages whose examples take longest (whole models, several options): run with -m slow, which CI runs too.
SLOW_PAGES = {"getting-started.md", "diagnostics-advanced.md", "metrics.md", "scaling.md", "reading-leaves.md"}


@pytest.mark.parametrize(
    "page",
    [pytest.param(p, marks=pytest.mark.slow) if p.name in SLOW_PAGES else p
     for p in PAGES if python_blocks(p.read_text())],
    ids=lambda p: p.name,
)
def test_docs_examples_run(page, tmp_path, monkeypatch):
    """Runs a page's blocks in order in one namespace (later blocks use earlier names), from a scratch folder."""
    blocks = python_blocks(page.read_text())
    monkeypatch.chdir(tmp_path)
    x64 = jax.config.read("jax_enable_x64")
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    skipped = []
    try:
        for block in blocks:
            if block.skip_reason:
                skipped.append(f"line {block.line}: {block.skip_reason}")
                continue
            try:
                exec(compile(block.code, f"{page.name}:{block.line}", "exec"), namespace)
            except Exception as error:
                raise AssertionError(f"{page.name}, the block at line {block.line} fails: {error!r}") from error
    finally:
        jax.config.update("jax_enable_x64", x64)
    if skipped:
        print(f"{page.name}: skipped blocks: {'; '.join(skipped)}")


@pytest.mark.slow
def test_site_builds_strict(tmp_path):
    """``mkdocs build --strict`` (broken links, a nav entry without a page, docstring warnings fail it)."""
    for module in ("mkdocs", "material", "mkdocstrings_handlers.python"):
        pytest.importorskip(module, reason="the docs extra is not installed (pip install -e '.[docs]')")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, env=env, timeout=300,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    assert (tmp_path / "site" / "api" / "index.html").read_text().count('id="wwjax.analyze"') == 1


def test_every_public_function_has_a_runnable_example():
    """Each public function of ``wwjax`` documents itself with a doctest that runs (``--doctest-modules`` runs
    them); an example that is only ``+SKIP`` does not count."""
    import inspect

    import wwjax

    missing = []
    for name in wwjax.__all__:
        if not inspect.isfunction(getattr(wwjax, name)):
            continue
        doc = inspect.getdoc(getattr(wwjax, name)) or ""
        runnable = [line for line in doc.splitlines() if line.strip().startswith(">>>") and "+SKIP" not in line]
        if not runnable:
            missing.append(name)
    assert not missing, f"public functions without a runnable docstring example: {missing}"
