"""The library's modules import each other at the top, and only modules before them in the layering the
README states (lesson order, with the exceptions it explains)."""

import ast
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
LIBRARY = ROOT / "minimagen"


def _readme_layers() -> list[str]:
    """The modules in the order of the README's "How the modules depend on each other" list."""
    text = (ROOT / "README.md").read_text()
    section = text.split("### How the modules depend on each other", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\d+\. `(\w+)`", section, flags=re.MULTILINE)


def _imports(module: pathlib.Path) -> tuple[set[str], set[str]]:
    """(minimagen modules imported at the top, those imported inside functions or classes)."""
    tree = ast.parse(module.read_text())
    top, nested = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("minimagen"):
            names = [node.module] if node.module != "minimagen" else [f"minimagen.{a.name}" for a in node.names]
            (top if node in tree.body else nested).update(n.split(".")[1] for n in names if "." in n)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("minimagen."):
                    (top if node in tree.body else nested).add(alias.name.split(".")[1])
    return top, nested


def test_the_readme_lists_every_module_once():
    layers = _readme_layers()
    modules = sorted(p.stem for p in LIBRARY.glob("*.py") if p.stem != "__init__")
    assert sorted(layers) == modules and len(set(layers)) == len(layers)


def test_modules_import_only_earlier_layers_and_only_at_the_top():
    layers = _readme_layers()
    for name in layers:
        top, nested = _imports(LIBRARY / f"{name}.py")
        assert not nested, f"{name} imports {sorted(nested)} inside a function: import at the top"
        later = sorted(m for m in top if layers.index(m) >= layers.index(name))
        assert not later, f"{name} imports {later}, which come after it in the README's layering"


def test_the_readme_names_each_module_s_imports():
    text = (ROOT / "README.md").read_text().split("### How the modules depend on each other", 1)[1].split("\n## ", 1)[0]
    for name, rest in re.findall(r"^\d+\. `(\w+)` — (.*)$", text, flags=re.MULTILINE):
        top, _ = _imports(LIBRARY / f"{name}.py")
        if rest.endswith("imports no other module"):
            assert not top, name
        elif not rest.endswith("everything above"):
            listed = {m.strip() for m in rest.rsplit(": ", 1)[1].split(",")}
            assert listed == top, f"{name}: README says {sorted(listed)}, the module imports {sorted(top)}"
