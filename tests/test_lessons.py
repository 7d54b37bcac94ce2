"""The lessons import the library; they never keep a second copy of it (STYLE.md, item 7)."""

import ast
import json
import pathlib

import pytest

import minimagen

ROOT = pathlib.Path(__file__).resolve().parents[1]
LESSONS = sorted((ROOT / "lessons").glob("[0-9][0-9]_*.ipynb"))
LIBRARY = pathlib.Path(minimagen.__file__).parent


def _public_library_names() -> set[str]:
    names = set()
    for module in LIBRARY.glob("*.py"):
        for node in ast.parse(module.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                names.add(node.name)
    return names


def _code(notebook: pathlib.Path) -> str:
    cells = json.loads(notebook.read_text())["cells"]
    return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")


def test_lessons_are_numbered_without_gaps_or_copies():
    numbers = [int(p.name[:2]) for p in LESSONS]
    assert numbers == list(range(len(numbers)))
    assert not [p for p in LESSONS if "copy" in p.name.lower() or "_v2" in p.name]


@pytest.mark.parametrize("notebook", LESSONS, ids=lambda p: p.name)
def test_lesson_does_not_redefine_library_names(notebook):
    defined = {
        node.name
        for node in ast.walk(ast.parse(_code(notebook)))
        if isinstance(node, (ast.FunctionDef, ast.ClassDef))
    }
    assert not defined & _public_library_names(), "import these from minimagen instead"


@pytest.mark.parametrize("notebook", LESSONS, ids=lambda p: p.name)
def test_lesson_starts_with_a_parameters_cell(notebook):
    cells = [c for c in json.loads(notebook.read_text())["cells"] if c["cell_type"] == "code"]
    first = cells[0]
    assert "parameters" in first["metadata"].get("tags", [])
    assert "DEVICE" in "".join(first["source"]) and "SCALE" in "".join(first["source"])


@pytest.mark.parametrize("notebook", LESSONS, ids=lambda p: p.name)
def test_lesson_is_stored_executed_top_to_bottom(notebook):
    cells = [c for c in json.loads(notebook.read_text())["cells"] if c["cell_type"] == "code"]
    counts = [c["execution_count"] for c in cells]
    assert counts == list(range(1, len(cells) + 1))
    assert not [o for c in cells for o in c["outputs"] if o["output_type"] == "error"]
