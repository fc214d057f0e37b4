"""Helpers shared by the tests and the benchmarks (no tests here).

Importable as ``tests.helpers`` from the repository root; `CHILDREN` is the file of fast
stand-in children that ``launch_search.py --child CHILDREN:quick`` loads by path.
"""

from pathlib import Path

CHILDREN = Path(__file__).with_name("children.py")
