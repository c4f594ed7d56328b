"""The landing page's code map names every module of the package, so readers can find them."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def modules() -> list[str]:
    package = ROOT / "src" / "segtut"
    names = [p.stem for p in package.glob("*.py") if not p.stem.startswith("_")]
    names += [p.name for p in package.iterdir() if (p / "__init__.py").exists()]
    return sorted(names)


def test_every_module_is_on_the_landing_page():
    text = (ROOT / "book" / "intro.md").read_text()
    code_map = text[text.index("## Where the code lives"):]
    missing = [name for name in modules() if f"`segtut.{name}`" not in code_map]
    assert not missing, f"book/intro.md's code map does not list: {missing}"
