#!/usr/bin/env python3
"""Point the whole project at one GitHub repository and ref, in one step.

The repository URL and ref (branch, tag or commit) appear in several places:

* ``_config.yml``: ``repository.url`` and ``repository.branch`` (the book's repository button and
  its Binder and Colab launch buttons);
* ``README.md``: the Binder, Colab and Kaggle badges and any clone command;
* every notebook: the badge line in its first markdown cell (Colab and Kaggle links to
  ``<url>/blob/<ref>/notebooks/<file>``) and the code cell tagged ``setup``, which holds
  ``SEGTUT_REPO = "<url>"`` and ``SEGTUT_REF = "<ref>"``;
* the pages under ``book/``, ``pyproject.toml`` and ``binder/`` where they mention the repository.

This script rewrites all of them. The URLs it replaces are the one in ``_config.yml`` and any
``SEGTUT_REPO`` value found in a notebook (plus ``--from`` URLs); other GitHub links (papers,
datasets, libraries) are left alone. Files are edited as text, so notebooks keep their exact
formatting and outputs.

Usage::

    python scripts/set_repository.py https://github.com/OWNER/REPO --ref v0.2.0
    python scripts/set_repository.py --ref 1a2b3c4         # keep the URL, pin another ref
    python scripts/set_repository.py                        # re-sync every file to _config.yml
    python scripts/set_repository.py --check                # exit 1 if any file disagrees

``tests/test_book_config.py`` checks that the notebooks agree with ``_config.yml``.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: Files that may mention the repository, relative to the project root.
FILE_GLOBS = (
    "_config.yml",
    "README.md",
    "pyproject.toml",
    "requirements*.txt",
    "notebooks/**/*.ipynb",
    "book/**/*.md",
    "binder/*",
)

URL_PATTERN = re.compile(r"^https://github\.com/(?P<owner>[\w.-]+)/(?P<name>[\w.-]+?)(?:\.git)?/?$")
# A ref ends at a character that cannot be part of it in a URL or a quoted string.
REF_CHARS = r"[^/\s\"'\\)\]?#&<>]+"
SETUP_ASSIGNMENT = r"({name}\s*=\s*)(\\?[\"'])[^\"'\\\n]*(\2)"


class RepositoryError(ValueError):
    """An invalid URL or ref, or a project whose configuration cannot be read."""


def parse_github_url(url: str) -> tuple[str, str]:
    """Split ``https://github.com/OWNER/REPO`` into ``(owner, repo)``.

    Raises:
        RepositoryError: the URL is not a GitHub repository URL (Colab, Kaggle and Binder's
            ``gh`` provider all need one).
    """
    match = URL_PATTERN.match(url.strip())
    if not match:
        raise RepositoryError(
            f"Not a GitHub repository URL: {url!r}. Expected https://github.com/OWNER/REPO "
            "(the Colab and Kaggle badges and Binder's launch button only work with GitHub).")
    return match["owner"], match["name"]


def check_ref(ref: str) -> str:
    """Return ``ref`` if it can be used in URLs and setup cells, else raise RepositoryError."""
    if not ref or not re.fullmatch(REF_CHARS, ref):
        raise RepositoryError(
            f"Unusable ref {ref!r}: give a branch, tag or commit without spaces, quotes, '/', "
            "'?', '#' or '&' (for example main, v0.1.0 or a commit hash).")
    return ref


def read_config(root: Path) -> tuple[str, str]:
    """Return ``(url, ref)`` from ``repository.url`` and ``repository.branch`` of _config.yml."""
    import yaml  # installed with jupyter-book

    path = root / "_config.yml"
    if not path.exists():
        raise RepositoryError(f"No _config.yml in {root}: run this from the segtut repository.")
    config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    repository = config.get("repository") or {}
    url, ref = repository.get("url"), repository.get("branch", "main")
    if not url:
        raise RepositoryError(f"{path} has no repository.url to start from; pass the URL.")
    return str(url).rstrip("/"), str(ref)


def project_files(root: Path) -> list[Path]:
    """Every existing file matched by FILE_GLOBS, sorted, without duplicates."""
    found = {path for pattern in FILE_GLOBS for path in root.glob(pattern) if path.is_file()}
    return sorted(path for path in found if ".ipynb_checkpoints" not in path.parts)


def setup_cell_urls(files: list[Path]) -> set[str]:
    """The SEGTUT_REPO values found in notebooks (they may differ from _config.yml)."""
    pattern = re.compile(SETUP_ASSIGNMENT.format(name="SEGTUT_REPO").replace(
        r"[^\"'\\\n]*", r"([^\"'\\\n]*)"))
    urls = set()
    for path in files:
        if path.suffix == ".ipynb":
            for match in pattern.finditer(path.read_text(encoding="utf-8")):
                if URL_PATTERN.match(match[3]):
                    urls.add(match[3].rstrip("/"))
    return urls


def rewrite_text(text: str, old_urls: set[str], new_url: str, new_ref: str) -> tuple[str, int]:
    """Replace every mention of the old repositories (and their refs) with the new ones.

    Returns:
        The new text and the number of replacements made.
    """
    new_owner, new_name = parse_github_url(new_url)
    new_slug = f"{new_owner}/{new_name}"
    total = 0

    def sub(pattern: str, replacement, string: str) -> str:
        nonlocal total
        string, count = re.subn(pattern, replacement, string, flags=re.IGNORECASE)
        total += count
        return string

    # The setup cell's assignments, whatever they currently hold (quotes may be JSON-escaped).
    text = sub(SETUP_ASSIGNMENT.format(name="SEGTUT_REPO"),
               lambda m: f"{m[1]}{m[2]}{new_url}{m[3]}", text)
    text = sub(SETUP_ASSIGNMENT.format(name="SEGTUT_REF"),
               lambda m: f"{m[1]}{m[2]}{new_ref}{m[3]}", text)

    for old_url in sorted(old_urls):
        owner, name = parse_github_url(old_url)
        slug = re.escape(f"{owner}/{name}")
        end = r"(?![\w.-])"  # the repository name ends here (segtut, not segtut-data)
        # GitHub file and folder links, also inside Kaggle's ?src=...: blob/tree/raw/edit + ref.
        text = sub(rf"github\.com/{slug}/(blob|tree|raw|edit)/{REF_CHARS}",
                   lambda m: f"github.com/{new_slug}/{m[1]}/{new_ref}", text)
        # Colab: colab.research.google.com/github/OWNER/REPO/blob/REF/...
        text = sub(rf"colab\.research\.google\.com/github/{slug}/blob/{REF_CHARS}",
                   f"colab.research.google.com/github/{new_slug}/blob/{new_ref}", text)
        # Binder: mybinder.org/v2/gh/OWNER/REPO/REF (badge links; the book's buttons come
        # from _config.yml).
        text = sub(rf"mybinder\.org/v2/gh/{slug}/{REF_CHARS}",
                   f"mybinder.org/v2/gh/{new_slug}/{new_ref}", text)
        # Raw files and pip's VCS URLs.
        text = sub(rf"raw\.githubusercontent\.com/{slug}/{REF_CHARS}",
                   f"raw.githubusercontent.com/{new_slug}/{new_ref}", text)
        text = sub(rf"git\+https://github\.com/{slug}(\.git)?@{REF_CHARS}",
                   f"git+{new_url}@{new_ref}", text)
        # Anything else: the bare repository URL (clone commands, repository buttons).
        text = sub(rf"https://github\.com/{slug}(\.git)?{end}",
                   lambda m: new_url + (m[1] or ""), text)
    return text, total


def rewrite_config(text: str, new_url: str, new_ref: str) -> str:
    """Set ``url`` and ``branch`` inside the ``repository:`` block of _config.yml's text."""
    block = re.search(r"^repository:[ \t]*\n((?:[ \t]+\S.*\n|[ \t]*\n)*)", text, re.MULTILINE)
    if block is None:
        return text.rstrip("\n") + f"\n\nrepository:\n  url: {new_url}\n  branch: {new_ref}\n"
    body = block[1]
    body, found_url = re.subn(r"^([ \t]+url:[ \t]*).*$", lambda m: m[1] + new_url, body,
                              count=1, flags=re.MULTILINE)
    body, found_ref = re.subn(r"^([ \t]+branch:[ \t]*).*$", lambda m: m[1] + new_ref, body,
                              count=1, flags=re.MULTILINE)
    if not found_url:
        body = f"  url: {new_url}\n" + body
    if not found_ref:
        body = re.sub(r"^([ \t]+url:.*\n)", lambda m: m[1] + f"  branch: {new_ref}\n", body,
                      count=1, flags=re.MULTILINE)
    return text[:block.start(1)] + body + text[block.end(1):]


def set_repository(root: Path, new_url: str | None = None, new_ref: str | None = None,
                   extra_old_urls: tuple[str, ...] = (), write: bool = True) -> dict[Path, int]:
    """Rewrite the project under ``root`` to use ``new_url`` at ``new_ref``.

    Args:
        root: the project root (holds _config.yml).
        new_url: the GitHub repository URL; ``None`` keeps the one in _config.yml.
        new_ref: a branch, tag or commit; ``None`` keeps the one in _config.yml.
        extra_old_urls: further repository URLs to replace.
        write: save the files; ``False`` only reports what would change.

    Returns:
        ``{path: number of replacements}`` for every file whose text changes.
    """
    config_url, config_ref = read_config(root)
    owner, name = parse_github_url(new_url or config_url)
    new_url = f"https://github.com/{owner}/{name}"
    new_ref = check_ref(new_ref or config_ref)
    files = project_files(root)
    old_urls = {config_url, *setup_cell_urls(files), *extra_old_urls, new_url}
    for url in old_urls:
        parse_github_url(url)

    changed = {}
    for path in files:
        text = path.read_text(encoding="utf-8")
        new_text, count = rewrite_text(text, old_urls, new_url, new_ref)
        if path == root / "_config.yml":
            new_text = rewrite_config(new_text, new_url, new_ref)
        if new_text != text:
            changed[path] = max(count, 1)
            if write:
                path.write_text(new_text, encoding="utf-8")
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Set the GitHub repository URL and ref used by _config.yml, the README "
                    "badges and the notebooks' setup cells and badges.")
    parser.add_argument("url", nargs="?",
                        help="https://github.com/OWNER/REPO (default: keep _config.yml's)")
    parser.add_argument("--ref", help="branch, tag or commit (default: keep _config.yml's)")
    parser.add_argument("--from", dest="old_urls", action="append", default=[], metavar="URL",
                        help="another old repository URL to replace (repeatable)")
    parser.add_argument("--root", type=Path, default=ROOT, help="project root (default: %(default)s)")
    parser.add_argument("--dry-run", action="store_true", help="show what would change, write nothing")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if any file disagrees with the target")
    args = parser.parse_args(argv)

    root = args.root.resolve()
    dry = args.dry_run or args.check
    try:
        config_url, config_ref = read_config(root)
        target_url, target_ref = args.url or config_url, args.ref or config_ref
        changed = set_repository(root, args.url, args.ref, tuple(args.old_urls), write=not dry)
    except RepositoryError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    verb = "would change" if dry else "changed"
    for path, count in changed.items():
        plural = "s" if count != 1 else ""
        print(f"{verb} {path.relative_to(root)} ({count} replacement{plural})")
    if not changed:
        print(f"Every file already uses {target_url} at {target_ref}.")
    elif not dry:
        print(f"Now using {target_url} at {target_ref}. Rebuild the book to update its buttons.")
    return 1 if (args.check and changed) else 0

if __name__ == "__main__":
    sys.exit(main())
