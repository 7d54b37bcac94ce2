"""The install story: pyproject.toml and environment.yml list the same packages with the same pins."""

import pathlib
import re
import tomllib

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _split(requirement: str) -> tuple[str, str]:
    """'torch>=2.1' -> ('torch', '>=2.1'); names are normalised as pip does (PEP 503)."""
    match = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", requirement)
    assert match, requirement
    name = re.sub(r"[-_.]+", "-", match.group(1)).lower()
    return name, match.group(2).replace(" ", "")


def _pyproject_requirements() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    requirements = list(project["dependencies"]) + list(extras["dev"]) + list(extras["lessons"])
    return dict(_split(r) for r in requirements)


def _environment_requirements() -> dict[str, str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_lists = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip_lists) == 1, "environment.yml should have exactly one pip: section"
    return dict(_split(r) for r in pip_lists[0])


def test_environment_lists_the_same_packages_as_pyproject():
    assert set(_environment_requirements()) == set(_pyproject_requirements())


def test_environment_uses_the_same_pins_as_pyproject():
    pyproject, environment = _pyproject_requirements(), _environment_requirements()
    # torch is the one deliberate difference: pyproject accepts any torch >= 2.1 so that a GPU user's
    # CUDA build is kept, while the conda environment (like the Makefile) pins the CPU wheel 2.13.0.
    assert environment.pop("torch") == "==2.13.0"
    assert pyproject.pop("torch") == ">=2.1"
    assert environment == pyproject


def test_makefile_installs_the_cpu_torch_wheel_first():
    makefile = (ROOT / "Makefile").read_text()
    assert "TORCH ?= torch==2.13.0" in makefile
    assert makefile.index("$(TORCH)") < makefile.index('pip install --quiet -e ".[dev,openmoji]"')


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme
    assert re.search(r"^make test$", ci, flags=re.MULTILINE)


def test_make_lessons_installs_jupyterlab_and_opens_the_lessons():
    makefile = (ROOT / "Makefile").read_text()
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(r.startswith("jupyterlab") for r in extras["lessons"])
    assert 'pip install --quiet -e ".[dev,openmoji,lessons]"' in makefile
    assert re.search(r"^lessons: ", makefile, flags=re.MULTILINE)
    assert "jupyter lab lessons/" in makefile
    assert "make lessons" in (ROOT / "README.md").read_text()
