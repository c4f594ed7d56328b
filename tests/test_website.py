"""The book as a reader sees it: build the website, open every page in headless Chromium.

Builds the book with ``-W --keep-going`` into a temporary folder (any warning fails the build
test), serves it on 127.0.0.1 and visits every page of ``_toc.yml`` in headless Chromium with
selenium, checking that:

* every page loads, with a title and no Sphinx or notebook error output;
* every same-origin image loads (``naturalWidth > 0``); external images (the Colab, Kaggle and
  Binder badges) cannot load offline and are only counted;
* every same-origin link resolves (HTTP 200, and its ``#fragment`` exists on the target page);
* notebook pages carry the Binder and Colab launch buttons for the configured repository.

Screenshots of the landing page and of chapter 03 (1280x900) go to ``tests/artifacts/`` with a
JSON report of what was checked. Chromium never reaches the network: every host except
127.0.0.1 resolves to nothing.

Needs Debian's ``chromium`` and ``chromium-driver`` packages and ``selenium``. Without them the
browser tests are skipped, except in CI (environment variable ``CI`` set), where they fail.
Set ``SEGTUT_BOOK_HTML=/path/to/_build/html`` to test an already-built site instead of building.
"""

from __future__ import annotations

import functools
import html.parser
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.website

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM_PATHS = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
CHROMEDRIVER_PATH = "/usr/bin/chromedriver"
LANDING = "book/intro"
CHAPTER_SCREENSHOT = "notebooks/03_unet_from_scratch"
WINDOW = (1280, 900)
BUILD_TIMEOUT_S = 600
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def missing_tool(reason: str):
    """Skip locally, fail in CI (which installs chromium, chromium-driver and selenium)."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so the website test must run: "
                    "apt-get install -y chromium chromium-driver; pip install selenium)")
    pytest.skip(reason)


def toc_pages() -> list[str]:
    """Every file of _toc.yml, root first, without extension (``book/intro``)."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    pages = [toc["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                pages.append(entry["file"])
            for key in ("chapters", "sections", "parts"):
                walk(entry.get(key))

    walk(toc.get("parts"))
    walk(toc.get("chapters"))
    return [re.sub(r"\.(md|ipynb)$", "", page) for page in pages]


def repository() -> tuple[str, str]:
    config = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))["repository"]
    return config["url"].rstrip("/"), str(config.get("branch", "main"))


# ------------------------------------------------------------------ build and serve

@pytest.fixture(scope="module")
def build():
    """Build the book once; yields ``{"returncode", "log", "warnings", "html", "seconds"}``."""
    prebuilt = os.environ.get("SEGTUT_BOOK_HTML")
    if prebuilt:
        yield {"returncode": 0, "log": "", "warnings": [], "html": Path(prebuilt), "seconds": 0.0}
        return
    executable = shutil.which("jupyter-book")
    command = ([executable] if executable else
               [sys.executable, "-c", "from jupyter_book.cli.main import main; main()"])
    with tempfile.TemporaryDirectory(prefix="segtut-book-") as output:
        start = time.perf_counter()
        result = subprocess.run(
            command + ["build", str(ROOT), "--path-output", output, "-W", "--keep-going", "--all"],
            capture_output=True, text=True, timeout=BUILD_TIMEOUT_S,
            env={**os.environ, "NO_COLOR": "1"})
        log = ANSI.sub("", result.stdout + result.stderr)
        warnings = list(dict.fromkeys(  # each once, in order (Sphinx repeats them at the end)
            line for line in log.splitlines() if re.search(r"\b(WARNING|ERROR|CRITICAL)\b", line)))
        yield {"returncode": result.returncode, "log": log, "warnings": warnings,
               "html": Path(output) / "_build" / "html",
               "seconds": time.perf_counter() - start}


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output readable
        pass


@pytest.fixture(scope="module")
def site(build):
    """Serve the built HTML on 127.0.0.1 at a free port; yields the base URL."""
    html_dir = build["html"]
    if not (html_dir / "index.html").is_file():
        pytest.fail("the book did not build (no index.html):\n" + build["log"][-5000:])
    handler = functools.partial(QuietHandler, directory=str(html_dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# ------------------------------------------------------------------ browser

@pytest.fixture(scope="module")
def browser():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing_tool("selenium is not installed (pip install selenium)")
    chromium = next((path for path in CHROMIUM_PATHS if os.path.exists(path)), None)
    if chromium is None or not os.path.exists(CHROMEDRIVER_PATH):
        missing_tool("Chromium not found (apt-get install -y chromium chromium-driver)")

    profile = tempfile.mkdtemp(prefix="segtut-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                 "--hide-scrollbars", f"--window-size={WINDOW[0]},{WINDOW[1]}",
                 f"--user-data-dir={profile}",
                 # Offline by construction: every host but the test server resolves to nothing.
                 "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: selenium-manager never runs, nothing is downloaded.
    service = Service(CHROMEDRIVER_PATH)
    os.environ.setdefault("SE_OFFLINE", "true")
    driver = webdriver.Chrome(service=service, options=options)
    try:
        driver.set_page_load_timeout(60)
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": WINDOW[0], "height": WINDOW[1], "deviceScaleFactor": 1, "mobile": False})
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


PAGE_STATE_JS = """
const done = arguments[arguments.length - 1];
const images = Array.from(document.images);
for (const img of images) { img.loading = 'eager'; }
const sameOrigin = images.filter(img => new URL(img.currentSrc || img.src, location.href).origin
                                        === location.origin);
const settle = img => img.complete ? Promise.resolve() : new Promise(resolve => {
  img.addEventListener('load', resolve, {once: true});
  img.addEventListener('error', resolve, {once: true});
});
const timeout = new Promise(resolve => setTimeout(resolve, 10000));
Promise.race([Promise.all(sameOrigin.map(settle)), timeout])
  .then(() => document.fonts ? document.fonts.ready : null)
  .then(() => done({
    url: location.href,
    title: document.title,
    heading: (document.querySelector('main h1, article h1, h1') || {}).textContent || '',
    // Error output, except in cells tagged raises-exception (they show an error on purpose).
    errorNodes: Array.from(document.querySelectorAll(
        '.system-message, .problematic, .output.traceback, .output.error'))
        .filter(node => !node.closest('.tag_raises-exception'))
        .map(node => node.className + ': ' + node.textContent.slice(0, 200)),
    images: images.map(img => ({src: img.currentSrc || img.src, complete: img.complete,
                                naturalWidth: img.naturalWidth})),
    links: Array.from(document.querySelectorAll('a[href]')).map(a => a.href),
    launch: Array.from(document.querySelectorAll('.dropdown-launch-buttons a[href]'))
        .map(a => a.href),
    launchButtonVisible: Array.from(document.querySelectorAll('.dropdown-launch-buttons'))
        .some(node => node.offsetParent !== null),
    text: (() => {
      const body = document.body ? document.body.cloneNode(true) : null;
      if (!body) { return ''; }
      body.querySelectorAll('.tag_raises-exception, script, style').forEach(n => n.remove());
      return body.textContent;
    })(),
  }));
"""

SPHINX_ERROR_TEXT = ("Traceback (most recent call last)", "System Message:", "Exception occurred",
                     "Unknown directive type", "Unknown interpreted text role")


@pytest.fixture(scope="module")
def crawl(site, browser):
    """Visit the root and every toc page once; screenshots; yields per-page results."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    pages = {}
    targets = {"index": site} | {page: urllib.parse.urljoin(site, page + ".html")
                                 for page in toc_pages()}
    browser.set_script_timeout(30)
    start = time.perf_counter()
    for page, url in targets.items():
        browser.get(url)
        state = browser.execute_async_script(PAGE_STATE_JS)
        state["console"] = [entry["message"] for entry in browser.get_log("browser")
                            if entry["level"] == "SEVERE"]
        pages[page] = state
        if page in (LANDING, CHAPTER_SCREENSHOT):
            name = "landing.png" if page == LANDING else "chapter03.png"
            browser.save_screenshot(str(ARTIFACTS / name))
    yield {"site": site, "pages": pages, "seconds": time.perf_counter() - start}


def same_origin(url: str, site: str) -> bool:
    return urllib.parse.urlsplit(url).netloc == urllib.parse.urlsplit(site).netloc


class IdCollector(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("id", "name") and value:
                self.ids.add(value)


def fetch(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            body = response.read()
            kind = response.headers.get_content_type()
            return response.status, body.decode("utf-8", "replace") if kind == "text/html" else ""
    except urllib.error.HTTPError as error:
        return error.code, ""


# ------------------------------------------------------------------ the tests

def test_book_builds_without_warnings(build):
    assert build["returncode"] == 0 and not build["warnings"], (
        f"jupyter-book build -W failed (exit {build['returncode']}) with "
        f"{len(build['warnings'])} warning(s):\n" + "\n".join(build["warnings"][:50])
        + "\n--- end of build log ---\n" + build["log"][-3000:])
    print(f"book built in {build['seconds']:.1f} s")


def test_every_page_loads(crawl):
    problems = []
    for page, state in crawl["pages"].items():
        if not state["title"].strip() or not state["heading"].strip():
            problems.append(f"{page}: no title or no heading")
        if state["errorNodes"]:
            problems.append(f"{page}: error output in the page: {state['errorNodes'][:3]}")
        for text in SPHINX_ERROR_TEXT:
            if text in state["text"]:
                problems.append(f"{page}: page text contains {text!r}")
        # Chromium asks every site for /favicon.ico; the book declares its own icon.
        missing = [m for m in state["console"]
                   if same_origin(m.split(" ")[0], crawl["site"]) and "404" in m
                   and not m.startswith(urllib.parse.urljoin(crawl["site"], "favicon.ico"))]
        if missing:
            problems.append(f"{page}: files missing from the site: {missing}")
    landed = crawl["pages"]["index"]["url"]
    if not landed.endswith(LANDING + ".html"):
        problems.append(f"the site root does not lead to the landing page (it shows {landed})")
    assert not problems, "\n".join(problems)


def test_every_image_loads(crawl):
    broken, checked, external = [], 0, set()
    for page, state in crawl["pages"].items():
        for image in state["images"]:
            src = image["src"]
            if src.startswith("data:") or same_origin(src, crawl["site"]):
                checked += 1
                if not (image["complete"] and image["naturalWidth"] > 0):
                    broken.append(f"{page}: {src}")
            else:
                external.add(src)
    print(f"{checked} same-origin images loaded; {len(external)} external images not checked "
          f"(they cannot load offline): {sorted(external)}")
    assert checked > 0 or not crawl["pages"], "no same-origin image at all: is the theme broken?"
    assert not broken, "images that did not load:\n" + "\n".join(broken)


def test_internal_links_resolve(crawl):
    site = crawl["site"]
    links: dict[str, set[str]] = {}
    external = set()
    for page, state in crawl["pages"].items():
        for href in state["links"]:
            if same_origin(href, site):
                links.setdefault(href, set()).add(page)
            elif href.startswith("http"):
                external.add(href)
    documents: dict[str, tuple[int, set[str] | None]] = {}
    problems = []
    for href, pages in sorted(links.items()):
        address, _, fragment = href.partition("#")
        if address not in documents:
            status, body = fetch(address)
            ids = None
            if body:
                collector = IdCollector()
                collector.feed(body)
                ids = collector.ids
            documents[address] = (status, ids)
        status, ids = documents[address]
        where = ", ".join(sorted(pages)[:3])
        if status != 200:
            problems.append(f"{href} -> HTTP {status} (linked from {where})")
        elif fragment and ids is not None and urllib.parse.unquote(fragment) not in ids:
            problems.append(f"{href}: no element with id {fragment!r} (linked from {where})")
    print(f"{len(links)} internal links to {len(documents)} documents checked; "
          f"{len(external)} external links not checked")
    assert not problems, "broken internal links:\n" + "\n".join(problems)


def test_launch_buttons_on_notebook_pages(crawl):
    url, ref = repository()
    slug = url.removeprefix("https://github.com/")
    notebook_pages = [p for p in crawl["pages"] if (ROOT / f"{p}.ipynb").is_file()]
    assert notebook_pages, "no notebook page in the table of contents"
    problems = []
    for page in notebook_pages:
        state = crawl["pages"][page]
        expected = {
            "Binder": f"https://mybinder.org/v2/gh/{slug}/{ref}?urlpath=",
            "Colab": f"https://colab.research.google.com/github/{slug}/blob/{ref}/{page}.ipynb",
        }
        for name, prefix in expected.items():
            hits = [href for href in state["launch"] if href.startswith(prefix)]
            if not hits:
                problems.append(f"{page}: no {name} launch button starting with {prefix} "
                                f"(found {state['launch']})")
            elif name == "Binder" and not any(page + ".ipynb" in h for h in hits):
                problems.append(f"{page}: Binder button does not open {page}.ipynb: {hits}")
        if not state["launchButtonVisible"]:
            problems.append(f"{page}: the launch-buttons menu is not visible")
    assert not problems, "\n".join(problems)


def test_screenshots_saved(crawl):
    from PIL import Image

    report = {name: {k: v for k, v in state.items() if k != "text"}
              for name, state in crawl["pages"].items()}
    (ARTIFACTS / "website_report.json").write_text(json.dumps(report, indent=1))
    for name in ("landing.png", "chapter03.png"):
        path = ARTIFACTS / name
        assert path.is_file(), f"no screenshot {path}"
        with Image.open(path) as image:
            assert image.size == WINDOW, f"{name} is {image.size}, expected {WINDOW}"
            colours = image.convert("L").getextrema()
            assert colours[1] - colours[0] > 50, f"{name} looks blank"
    print(f"pages visited in {crawl['seconds']:.1f} s; screenshots in {ARTIFACTS}")
