"""The README and docs/ cannot rot: every ```python block runs (or, marked
``<!-- no-run: reason -->``, at least compiles), and every relative link resolves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINKED_PAGES = [*EXAMPLE_PAGES, ROOT / "CONTRIBUTING.md", ROOT / "CHANGELOG.md"]
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
NO_RUN = re.compile(r"<!--\s*no-run:\s*(.+?)\s*-->\s*$")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def python_blocks(page: Path) -> list[tuple[int, str, str | None]]:
    """(line, code, no-run reason or None) of each ```python block, in page order."""
    text = page.read_text(encoding="utf-8")
    blocks = []
    for m in FENCE.finditer(text):
        if m.group(1) != "python":
            continue
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        reason = NO_RUN.search(before)
        blocks.append((text.count("\n", 0, m.start()) + 1, m.group(2), reason.group(1) if reason else None))
    return blocks


def rel(page: Path) -> str:
    return str(page.relative_to(ROOT))


def test_every_page_with_examples_is_found() -> None:
    names = {p.name for p in EXAMPLE_PAGES}
    assert {"README.md", "search.md", "api.md", "run-folder.md", "layers.md", "benchmarks.md"} <= names
    assert sum(len(python_blocks(p)) for p in EXAMPLE_PAGES) >= 8


@pytest.mark.parametrize("page", [p for p in EXAMPLE_PAGES if python_blocks(p)], ids=rel)
def test_python_examples_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One namespace per page, blocks in order (a later example may use an earlier one's
    names), in a scratch folder; no-run blocks are compiled only."""
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    namespace: dict = {"__name__": "__main__"}
    try:
        for line, code, no_run in python_blocks(page):
            compiled = compile(code, f"{rel(page)}:{line}", "exec")
            if no_run is None:
                exec(compiled, namespace)  # noqa: S102 - the documentation's own examples
    finally:
        torch.set_num_threads(threads)


def test_no_run_blocks_are_rare_and_say_why() -> None:
    marked = [(rel(p), line, why) for p in EXAMPLE_PAGES for line, _, why in python_blocks(p) if why]
    assert all(len(why) > 10 for *_, why in marked)
    assert len(marked) <= 3, marked


def test_docs_training_function_runs_without_ray(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/api.md's run_search example is no-run (Ray); its model and train_fn still run."""
    from search_space import Plan, SiteSpec, find_sites

    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "docs_api"}  # defines everything, starts no search
    line, code, _ = next(b for b in python_blocks(ROOT / "docs" / "api.md") if "run_search(" in b[1])
    exec(compile(code, f"docs/api.md:{line}", "exec"), namespace)  # noqa: S102
    sites = find_sites(namespace["UserNet"]())
    plan = Plan({sites[0]: SiteSpec("dropout", {"drop_prob": 0.1})})
    reports: list[dict] = []
    namespace["user_train"](plan, 0, lambda **m: reports.append(m))
    assert len(reports) == namespace["EPOCHS"] and all(set(r) == {"val_loss"} for r in reports)
    # the example follows the learned baseline's recipe: a search gets its rates back
    from search_space import SearchSpace
    from search_space.learned import learning_plan, trained_rates

    learning = learning_plan(SearchSpace.for_model(namespace["UserNet"]()))
    namespace["user_train"](learning, 0, lambda **m: None)
    rates, why = trained_rates(learning)
    assert why == "" and set(rates) == set(sites) and all(0 < r < 1 for r in rates.values())


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*$", text, re.M)}


@pytest.mark.parametrize("page", LINKED_PAGES, ids=rel)
def test_relative_links_resolve(page: Path) -> None:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    bad = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            bad.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{target}: no heading #{anchor}")
    assert not bad, f"{rel(page)}: " + "; ".join(bad)


def test_readme_is_short_and_opens_with_the_two_setup_commands() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 300
    commands = [m.group(2).strip() for m in FENCE.finditer(text) if m.group(1) == "bash"][:2]
    assert commands == [
        "pip install -e . && python launch_search.py",
        "pip install -e '.[test]' && ruff check . && ruff format --check . && python -m pytest",
    ]
    assert (ROOT / ".ci" / "run").read_text().count(commands[1]) == 1  # CI runs exactly that
