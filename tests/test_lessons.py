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


EXERCISES = sorted((ROOT / "lessons" / "exercises").glob("e[0-9][0-9]_*.ipynb"))


def test_exercises_are_numbered_in_lesson_order():
    assert [int(p.name[1:3]) for p in EXERCISES] == list(range(1, len(EXERCISES) + 1))
    assert len(EXERCISES) >= 8


@pytest.mark.parametrize("notebook", EXERCISES, ids=lambda p: p.name)
def test_exercise_starts_with_a_parameters_cell_and_is_stored_executed(notebook):
    cells = [c for c in json.loads(notebook.read_text())["cells"] if c["cell_type"] == "code"]
    assert "parameters" in cells[0]["metadata"].get("tags", [])
    assert "DEVICE" in "".join(cells[0]["source"]) and "SCALE" in "".join(cells[0]["source"])
    assert [c["execution_count"] for c in cells] == list(range(1, len(cells) + 1))
    assert not [o for c in cells for o in c["outputs"] if o["output_type"] == "error"]


@pytest.mark.parametrize("notebook", EXERCISES, ids=lambda p: p.name)
def test_exercise_redefines_library_names_only_in_its_solution_cells(notebook):
    # An exercise asks the student to write a library function again; anywhere else, import it.
    cells = json.loads(notebook.read_text())["cells"]
    outside = "\n".join("".join(c["source"]) for c in cells
                        if c["cell_type"] == "code" and not c["metadata"].get("nbgrader", {}).get("solution"))
    defined = {node.name for node in ast.walk(ast.parse(outside)) if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    assert not defined & _public_library_names()


@pytest.mark.parametrize("notebook", EXERCISES, ids=lambda p: p.name)
def test_every_solution_cell_has_a_check_cell_in_nbgrader_format(notebook):
    cells = json.loads(notebook.read_text())["cells"]
    grader = [c["metadata"]["nbgrader"] for c in cells if "nbgrader" in c["metadata"]]
    solutions = [g for g in grader if g["solution"]]
    checks = [g for g in grader if g["grade"]]
    assert solutions and len(checks) >= len(solutions)
    ids = [g["grade_id"] for g in grader]
    assert len(ids) == len(set(ids))  # nbgrader needs unique ids
    for g in checks:
        assert g["locked"] and g["points"] > 0 and g["schema_version"] == 3
