"""The classroom workflow around ``lessons/exercises/``: student versions, and grading submissions.

The exercise notebooks follow nbgrader's format, so an instructor who uses nbgrader can take them as
they are (``nbgrader generate_assignment``, ``nbgrader autograde``):

- a **solution cell** has ``metadata.nbgrader = {"solution": true, "grade": false, ...}``, and the code a
  student must write sits between ``### BEGIN SOLUTION`` and ``### END SOLUTION``;
- a **check cell** has ``{"grade": true, "locked": true, "points": 1, ...}`` and calls a
  ``minimagen.exercises.check_...`` function; it passes when it runs without an error.

Without nbgrader, ``student_version`` does what ``nbgrader generate_assignment`` does to a solution
region (replaces it by ``# YOUR CODE HERE`` and a ``raise NotImplementedError``, indented like the
region), adding to the error a pointer to the lesson that teaches the piece, and ``grade`` runs
submissions headless with a time limit each and reports one row per check cell.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import pathlib
import re
import signal
import subprocess
import sys
import tempfile
from typing import Iterable, Sequence

import nbformat
from nbclient import NotebookClient

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
EXERCISES_DIR = pathlib.Path(__file__).resolve().parents[1] / "lessons" / "exercises"
STUDENT_MARK = "# YOUR CODE HERE"

__all__ = ["student_version", "write_student_versions", "grade", "GradeRow", "write_table", "markdown_table"]


def _nbgrader(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def _function_name(lines: Sequence[str]) -> str | None:
    for line in reversed(lines):
        stripped = line.strip()
        if stripped.startswith("def ") and "(" in stripped:
            return stripped[4:stripped.index("(")].strip()
    return None


def strip_solutions(source: str, pointer: str, where: str = "cell") -> str:
    """Replace every ``### BEGIN SOLUTION`` ... ``### END SOLUTION`` region of ``source`` by a stub.

    The stub keeps the indentation of the ``BEGIN`` line and raises ``NotImplementedError`` naming the
    function it belongs to and ``pointer`` (where the idea is taught). Unbalanced markers are an error.
    """
    out: list[str] = []
    inside = False
    for number, line in enumerate(source.splitlines(), 1):
        stripped = line.strip()
        if stripped == BEGIN:
            if inside:
                raise ValueError(f"{where}: line {number} opens a solution region inside another one")
            inside = True
            indent = line[: len(line) - len(line.lstrip())]
            name = _function_name(out)
            what = f"write {name}()" if name else "write this part"
            out.append(f"{indent}{STUDENT_MARK}")
            out.append(f"{indent}raise NotImplementedError({f'{what}: {pointer}'!r})")
        elif stripped == END:
            if not inside:
                raise ValueError(f"{where}: line {number} closes a solution region that was never opened")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"{where}: a solution region is opened ({BEGIN}) but never closed ({END})")
    return "\n".join(out)


def student_version(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The notebook a student gets: solution regions stubbed, every output and execution count cleared."""
    student = nbformat.from_dict(nb)
    default_pointer = nb.get("metadata", {}).get("minimagen", {}).get("lesson", "see the lessons")
    for index, cell in enumerate(student.cells):
        if cell.cell_type == "code":
            pointer = cell.get("metadata", {}).get("minimagen", {}).get("lesson", default_pointer)
            cell.source = strip_solutions(cell.source, f"see {pointer}", where=f"cell {index}")
            cell.outputs, cell.execution_count = [], None
            cell.metadata.pop("execution", None)
        elif _nbgrader(cell).get("solution") and cell.cell_type == "markdown":
            cell.source = "YOUR ANSWER HERE"
    return student


def _notebooks(paths: Iterable[str | os.PathLike]) -> list[pathlib.Path]:
    """The ``.ipynb`` files named, and those inside named folders (sorted); other files are kept too, so
    that ``grade`` can report them as not notebooks."""
    found: list[pathlib.Path] = []
    for raw in paths:
        path = pathlib.Path(raw)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
        else:
            found.append(path)
    return found


def write_student_versions(sources: Sequence[str | os.PathLike], out_dir: str | os.PathLike) -> list[pathlib.Path]:
    """Write the student version of every exercise notebook in ``sources`` (files or folders) to ``out_dir``.

    Refuses to write over a source notebook (that would erase its solutions) and notebooks without any
    solution region (not exercises)."""
    notebooks = _notebooks(sources)
    if not notebooks:
        raise ValueError(f"no .ipynb notebook found in {[str(s) for s in sources]}")
    out = pathlib.Path(out_dir)
    for path in notebooks:
        if not path.exists():
            raise ValueError(f"no such file: {str(path)!r}")
        if path.suffix != ".ipynb" or not path.is_file():
            raise ValueError(f"{str(path)!r} is not a notebook file (.ipynb)")
        if (out / path.name).resolve() == path.resolve():
            raise ValueError(f"the student version of {str(path)!r} would overwrite it (and its solutions): "
                             f"choose another output folder")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        if not any(BEGIN in c.source for c in nb.cells if c.cell_type == "code"):
            raise ValueError(f"{str(path)!r} has no solution region ({BEGIN}): not an exercise notebook")
        dest = out / path.name
        nbformat.write(student_version(nb), dest)
        written.append(dest)
    return written


# -- grading ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class GradeRow:
    submission: str
    exercise: str
    passed: bool
    hint: str


def _error_text(outputs) -> str | None:
    for output in outputs:
        if output.get("output_type") == "error":
            return f"{output.get('ename', 'Error')}: {output.get('evalue', '')}".strip()
    return None


def _execute_in_place(src: str, dest: str, folder: str) -> None:
    """Run one notebook top to bottom in ``folder`` (errors recorded, not raised) and write it with its outputs."""
    nb = nbformat.read(src, as_version=4)
    client = NotebookClient(nb, timeout=None, allow_errors=True, kernel_name="python3",
                            resources={"metadata": {"path": folder}})
    client.execute()
    nbformat.write(nb, dest)


def _run_with_limit(path: pathlib.Path, nb: nbformat.NotebookNode,
                    time_limit: float) -> tuple[nbformat.NotebookNode | None, str | None]:
    """Execute ``nb`` (submitted as ``path``, whose folder it runs in) in a child process (and its kernel)
    killed after ``time_limit`` seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        src, dest = pathlib.Path(tmp) / "submitted.ipynb", pathlib.Path(tmp) / "executed.ipynb"
        nbformat.write(nb, src)
        code = ("import sys; from minimagen.grading import _execute_in_place; "
                "_execute_in_place(sys.argv[1], sys.argv[2], sys.argv[3])")
        proc = subprocess.Popen([sys.executable, "-c", code, str(src), str(dest), str(path.resolve().parent)],
                                stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            _, stderr = proc.communicate(timeout=time_limit)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the kernel is in the same session: it goes too
            proc.communicate()
            return None, f"ran past the time limit of {time_limit:g} s and was stopped"
        if proc.returncode != 0 or not dest.exists():
            last = (stderr or "").strip().splitlines()
            return None, f"could not be run: {last[-1] if last else f'exit code {proc.returncode}'}"
        return nbformat.read(dest, as_version=4), None


def _released_checks(release: Sequence[str | os.PathLike]) -> list[tuple[set[str], dict[str, nbformat.NotebookNode]]]:
    """For each released exercise notebook: all its grade ids, and its check cells by grade id."""
    released = []
    for path in _notebooks(release):
        nb = nbformat.read(path, as_version=4)
        ids = {_nbgrader(c)["grade_id"] for c in nb.cells if "grade_id" in _nbgrader(c)}
        checks = {_nbgrader(c)["grade_id"]: c for c in nb.cells if _nbgrader(c).get("grade") and "grade_id" in _nbgrader(c)}
        released.append((ids, checks))
    return released


def _restore_checks(submitted: nbformat.NotebookNode, released) -> tuple[nbformat.NotebookNode, list[str]]:
    """Put the released source back into the submission's check cells (as ``nbgrader autograde`` does), so an
    edited check cannot pass; returns the notebook and the released check ids the submission lacks."""
    ids = {_nbgrader(c)["grade_id"] for c in submitted.cells if "grade_id" in _nbgrader(c)}
    match = max(released, key=lambda r: len(r[0] & ids), default=None)
    if match is None or not match[0] & ids:
        return submitted, []  # not one of the released exercises: grade its own checks
    restored = nbformat.from_dict(submitted)
    present = set()
    for cell in restored.cells:
        grade_id = _nbgrader(cell).get("grade_id")
        if grade_id in match[1]:
            cell.cell_type, cell.source = "code", match[1][grade_id].source
            cell.metadata["nbgrader"] = dict(match[1][grade_id].metadata["nbgrader"])
            present.add(grade_id)
    return restored, [g for g in match[1] if g not in present]


def grade(paths: Sequence[str | os.PathLike], time_limit: float = 180.0,
          release: Sequence[str | os.PathLike] | None = None) -> list[GradeRow]:
    """Run every submitted notebook and score its check cells (nbgrader's ``grade: true`` cells).

    A check passes when its cell ran without an error; a failing one reports the checker's hint (or the
    error the cell raised). The check cells are first reset to those of the released notebook with the same
    grade ids (``release``: default the shipped ``lessons/exercises``), and a check cell missing from a
    submission fails. A file that is not a notebook, a notebook that cannot be run or that runs past
    ``time_limit`` seconds, and a notebook without check cells each get one row of their own.
    """
    if time_limit <= 0:
        raise ValueError(f"time_limit must be > 0 seconds, got {time_limit}")
    released = _released_checks(release if release is not None else [EXERCISES_DIR])
    rows: list[GradeRow] = []
    for path in _notebooks(paths):
        name = str(path)
        if not path.is_file():
            rows.append(GradeRow(name, "-", False, "no such file"))
            continue
        try:
            submitted = nbformat.read(path, as_version=4)
        except Exception as error:  # any unreadable file gets a row, never a crash of the whole run
            rows.append(GradeRow(name, "-", False, f"not a notebook ({type(error).__name__})"))
            continue
        submitted, removed = _restore_checks(submitted, released)
        rows += [GradeRow(name, check, False, "the check cell was removed from the submission") for check in removed]
        checks = [c.metadata["nbgrader"]["grade_id"] for c in submitted.cells
                  if c.cell_type == "code" and _nbgrader(c).get("grade") and "grade_id" in _nbgrader(c)]
        if not checks:
            if not removed:
                rows.append(GradeRow(name, "-", False, "no check cells (nbgrader grade cells) in this notebook"))
            continue
        executed, problem = _run_with_limit(path, submitted, time_limit)
        if executed is None:
            rows += [GradeRow(name, check, False, f"the notebook {problem}") for check in checks]
            continue
        first_error = None
        for cell in executed.cells:
            if cell.cell_type != "code":
                continue
            error = _error_text(cell.get("outputs", []))
            info = _nbgrader(cell)
            if info.get("grade") and "grade_id" in info:
                hint = error or ""
                if error and first_error and "NameError" in error:
                    hint = f"{error} (an earlier cell failed first: {first_error})"
                hint = re.sub(r"^ExerciseFailed: FAIL [\w.]+: ", "", hint)  # the table's columns say that much
                rows.append(GradeRow(name, info["grade_id"], error is None, hint))
            elif error and first_error is None:
                first_error = error
    return rows


def markdown_table(rows: Sequence[GradeRow]) -> str:
    lines = ["| submission | exercise | result | hint |", "|---|---|---|---|"]
    for r in rows:
        hint = r.hint.replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {r.submission} | {r.exercise} | {'pass' if r.passed else 'FAIL'} | {hint} |")
    return "\n".join(lines) + "\n"


def write_table(rows: Sequence[GradeRow], csv_path: str | os.PathLike, md_path: str | os.PathLike) -> None:
    """The grading table as CSV (submission, exercise, passed, hint) and as Markdown."""
    for p in (csv_path, md_path):
        pathlib.Path(p).parent.mkdir(parents=True, exist_ok=True)
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["submission", "exercise", "passed", "hint"])
        for r in rows:
            writer.writerow([r.submission, r.exercise, "pass" if r.passed else "fail", r.hint])
    pathlib.Path(md_path).write_text(markdown_table(rows))
