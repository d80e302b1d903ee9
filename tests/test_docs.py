"""Claims of the README and the command-line help that a test can check cheaply: the Layout names every module of
the package, the help of each command names the files it writes."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _layout() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.search(r"## Layout\n\n```\n(.*?)```", readme, re.S).group(1)


def test_readme_layout_names_every_module_of_the_package():
    """The Layout's package entry lists the modules (fastminerf/drawing.py, the contact sheet's and the training
    curve's drawing helpers, was missing from it)."""
    layout = _layout()
    modules = sorted(p.name for p in (ROOT / "fastminerf").glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    packages = sorted(p.name + "/" for p in (ROOT / "fastminerf").iterdir() if (p / "__init__.py").is_file())
    missing = [name for name in modules + packages if name not in layout]
    assert not missing, f"README's Layout does not name {missing}"
