"""Student versions and grading: no solution survives, submissions are run headless and tabulated, and a
bad submission gets a row of its own instead of stopping the grading run."""

import csv
import pathlib

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from minimagen import cli, grading

EXERCISES = pathlib.Path(__file__).resolve().parents[1] / "lessons" / "exercises"


def _solution_lines(source: str) -> list[str]:
    lines, inside = [], False
    for line in source.splitlines():
        if line.strip() == grading.BEGIN:
            inside = True
        elif line.strip() == grading.END:
            inside = False
        elif inside and line.strip() and not line.strip().startswith("#"):
            lines.append(line.strip())
    return lines


def test_no_solution_line_survives_in_any_student_version():
    notebooks = sorted(EXERCISES.glob("*.ipynb"))
    assert len(notebooks) >= 8
    for path in notebooks:
        original = nbformat.read(path, as_version=4)
        student = grading.student_version(original)
        assert len(student.cells) == len(original.cells)
        for before, after in zip(original.cells, student.cells):
            if before.cell_type != "code":
                continue
            outside = {l.strip() for l in before.source.splitlines()} - set(_solution_lines(before.source))
            leaked = [l for l in _solution_lines(before.source)
                      if l not in outside and l in {x.strip() for x in after.source.splitlines()}]
            assert not leaked, f"{path.name}: {leaked}"
            assert after.outputs == [] and after.execution_count is None
            if before.metadata.get("nbgrader", {}).get("solution"):
                assert "raise NotImplementedError" in after.source and grading.STUDENT_MARK in after.source
                assert "lessons/" in after.source  # the stub points at the lesson that teaches the piece
                assert after.metadata["nbgrader"] == before.metadata["nbgrader"]  # nbgrader can still grade it


def test_strip_solutions_keeps_indentation_and_names_the_function():
    source = "def f(x):\n    \"\"\"doc\"\"\"\n    ### BEGIN SOLUTION\n    return x + 1\n    ### END SOLUTION\n"
    stub = grading.strip_solutions(source, "see lesson 01")
    assert stub.splitlines() == ['def f(x):', '    """doc"""', "    # YOUR CODE HERE",
                                 "    raise NotImplementedError('write f(): see lesson 01')"]
    namespace = {}
    exec(stub, namespace)
    with pytest.raises(NotImplementedError, match="write f"):
        namespace["f"](1)


@pytest.mark.parametrize("source, problem", [
    ("### BEGIN SOLUTION\nx = 1\n", "never closed"),
    ("x = 1\n### END SOLUTION\n", "never opened"),
    ("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION\n", "inside another"),
])
def test_unbalanced_markers_are_an_error_naming_the_cell(source, problem):
    with pytest.raises(ValueError, match=problem):
        grading.strip_solutions(source, "x", where="cell 3")


def _tiny_exercise(body: str) -> nbformat.NotebookNode:
    """A one-exercise notebook in the exercises' format: static thresholding, its solution and its check."""
    solution = new_code_cell(f"import torch\n\ndef static_threshold(x0):\n    ### BEGIN SOLUTION\n    {body}\n"
                             "    ### END SOLUTION\n")
    solution.metadata["nbgrader"] = {"grade": False, "grade_id": "tiny_static", "locked": False,
                                     "schema_version": 3, "solution": True, "task": False}
    check = new_code_cell("from minimagen.exercises import check_static_threshold\n"
                          "check_static_threshold(static_threshold)")
    check.metadata["nbgrader"] = {"grade": True, "grade_id": "check_tiny_static", "locked": True, "points": 1,
                                  "schema_version": 3, "solution": False, "task": False}
    nb = new_notebook(cells=[new_markdown_cell("# tiny"), solution, check])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def test_grade_gives_each_submission_its_verdict(tmp_path):
    class_dir = tmp_path / "submissions"
    class_dir.mkdir()
    right = nbformat.read(EXERCISES / "e01_forward_process.ipynb", as_version=4)
    nbformat.write(right, class_dir / "ada.ipynb")
    nbformat.write(grading.student_version(right), class_dir / "blank.ipynb")
    mistake = nbformat.from_dict(right)
    for cell in mistake.cells:
        if cell.metadata.get("nbgrader", {}).get("grade_id") == "q_sample":
            cell.source = cell.source.replace("tables.alphas_cumprod[t]", "tables.alphas[t]")
    nbformat.write(mistake, class_dir / "cy.ipynb")
    (class_dir / "notes.ipynb").write_text("this is not a notebook")

    rows = grading.grade([class_dir], time_limit=120)
    verdicts = {(pathlib.Path(r.submission).name, r.exercise): r for r in rows}
    assert {k for k in verdicts if k[0] == "ada.ipynb"} == {("ada.ipynb", "check_q_sample"), ("ada.ipynb", "check_snr")}
    assert verdicts["ada.ipynb", "check_q_sample"].passed and verdicts["ada.ipynb", "check_snr"].passed
    blank = verdicts["blank.ipynb", "check_q_sample"]
    assert not blank.passed and "not written yet" in blank.hint
    cy = verdicts["cy.ipynb", "check_q_sample"]
    assert not cy.passed and "alpha_t" in cy.hint and "alpha_bar_t" in cy.hint
    assert verdicts["cy.ipynb", "check_snr"].passed  # one mistake fails one exercise, not the notebook
    assert not verdicts["notes.ipynb", "-"].passed and "not a notebook" in verdicts["notes.ipynb", "-"].hint


def test_a_submission_that_runs_too_long_gets_its_own_row(tmp_path):
    slow = _tiny_exercise("return x0.clamp(-1, 1)")
    slow.cells.insert(1, new_code_cell("import time\ntime.sleep(120)"))
    nbformat.write(slow, tmp_path / "slow.ipynb")
    nbformat.write(_tiny_exercise("return x0.clamp(-1, 1)"), tmp_path / "fine.ipynb")
    rows = grading.grade([tmp_path / "slow.ipynb", tmp_path / "fine.ipynb"], time_limit=15)
    assert [(pathlib.Path(r.submission).name, r.passed) for r in rows] == [("slow.ipynb", False), ("fine.ipynb", True)]
    assert "time limit of 15 s" in rows[0].hint


def test_grade_command_writes_the_table_and_exits_by_the_verdict(tmp_path, capsys):
    nbformat.write(_tiny_exercise("return x0.clamp(-1, 1)"), tmp_path / "right.ipynb")
    nbformat.write(_tiny_exercise("return x0.clamp(max=1)"), tmp_path / "wrong.ipynb")
    out_csv, out_md = tmp_path / "grades.csv", tmp_path / "grades.md"
    assert cli.main(["exercises", "grade", str(tmp_path / "right.ipynb"), "--csv", str(out_csv),
                     "--markdown", str(out_md)]) == 0
    status = cli.main(["exercises", "grade", str(tmp_path / "right.ipynb"), str(tmp_path / "wrong.ipynb"),
                       "--csv", str(out_csv), "--markdown", str(out_md)])
    assert status == 1
    table = list(csv.DictReader(out_csv.open()))
    assert [(pathlib.Path(r["submission"]).name, r["passed"]) for r in table] == [("right.ipynb", "pass"),
                                                                                  ("wrong.ipynb", "fail")]
    assert "only the upper side is clipped" in table[1]["hint"]
    assert "wrong.ipynb | check_tiny_static | FAIL" in out_md.read_text()
    assert "1 of 2 checks passed" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["exercises", "grade", "no/such/folder"], "no such file or folder: no/such/folder"),
    (["exercises", "grade", "x.ipynb", "--time-limit", "0"], "--time-limit must be > 0"),
])
def test_bad_grade_input_is_one_line_and_exit_2(argv, message, capsys):
    assert cli.main(argv) == 2  # the exit status of `minimagen`
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"minimagen exercises grade: error: {message}"] or (len(err) == 1 and message in err[0])


def test_student_command_writes_every_exercise(tmp_path, capsys):
    assert cli.main(["exercises", "student", str(tmp_path / "handout")]) == 0
    written = sorted(p.name for p in (tmp_path / "handout").glob("*.ipynb"))
    assert written == sorted(p.name for p in EXERCISES.glob("*.ipynb"))
    assert cli.main(["exercises", "student", str(tmp_path / "h2"), "--from", str(tmp_path / "nothing-here")]) == 2


def test_an_edited_or_removed_check_cell_does_not_pass(tmp_path):
    right = nbformat.read(EXERCISES / "e01_forward_process.ipynb", as_version=4)
    student = grading.student_version(right)
    for cell in student.cells:  # a student who makes the checks "pass" instead of writing snr
        if cell.metadata.get("nbgrader", {}).get("grade_id") == "check_snr":
            cell.source = "print('PASS snr')"
    student.cells = [c for c in student.cells if c.metadata.get("nbgrader", {}).get("grade_id") != "check_q_sample"]
    nbformat.write(student, tmp_path / "sly.ipynb")
    rows = {r.exercise: r for r in grading.grade([tmp_path / "sly.ipynb"], time_limit=120)}
    assert not rows["check_q_sample"].passed and "removed" in rows["check_q_sample"].hint
    assert not rows["check_snr"].passed and "not written yet" in rows["check_snr"].hint


def test_student_versions_never_overwrite_the_solutions(tmp_path):
    copy = tmp_path / "e01.ipynb"
    copy.write_bytes((EXERCISES / "e01_forward_process.ipynb").read_bytes())
    with pytest.raises(ValueError, match="would overwrite"):
        grading.write_student_versions([copy], tmp_path)
    with pytest.raises(ValueError, match="no such file"):
        grading.write_student_versions([tmp_path / "missing.ipynb"], tmp_path / "out")
    lesson = pathlib.Path(__file__).resolve().parents[1] / "lessons" / "00_imagen_and_shapes.ipynb"
    with pytest.raises(ValueError, match="no solution region"):
        grading.write_student_versions([lesson], tmp_path / "out")
