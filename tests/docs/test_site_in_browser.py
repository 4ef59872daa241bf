"""The built site in a real headless browser: the quick start and the benchmark page load with every image.

The site is built with ``mkdocs build --strict`` into a scratch folder and served on 127.0.0.1; headless
Chromium opens each page and takes a screenshot. The server records what the browser fetched, so the
test sees that each ``<img>`` of the page was requested and served. Skipped where no Chromium is
installed. ``LONGCTX_UPDATE_SCREENSHOTS=1`` copies the screenshots to ``docs/img/screenshot_*.png``.
"""

from __future__ import annotations

import functools
import html.parser
import os
import shutil
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BROWSER = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
PAGES = {"quickstart": "quickstart/", "benchmarks": "benchmarks/"}

pytestmark = [pytest.mark.skipif(BROWSER is None, reason="no headless Chromium on this machine"),
              pytest.mark.timeout(600)]


class Images(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.srcs.append(dict(attrs)["src"])


class Recorder(SimpleHTTPRequestHandler):
    served: list = []

    def log_message(self, *args):
        pass

    def send_response(self, code, message=None):
        self.served.append((self.path.split("?")[0], code))
        super().send_response(code, message)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    built = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=REPO,
                           env=env, capture_output=True, text=True, timeout=480)
    assert built.returncode == 0, built.stderr[-3000:]
    handler = functools.partial(Recorder, directory=str(out))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield out, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


@pytest.mark.parametrize("name", sorted(PAGES))
def test_page_renders_with_its_images(site, name, tmp_path):
    out, url = site
    page = out / PAGES[name] / "index.html"
    parser = Images()
    parser.feed(page.read_text())
    Recorder.served.clear()
    shot = tmp_path / f"screenshot_{name}.png"
    res = subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                          "--window-size=1280,2400", "--virtual-time-budget=5000", f"--screenshot={shot}",
                          url + PAGES[name]], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and shot.read_bytes()[:4] == b"\x89PNG", res.stderr[-2000:]
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one
    served = dict(Recorder.served)
    assert served.get("/" + PAGES[name]) == 200
    wanted = {"/" + os.path.normpath(os.path.join(PAGES[name], src)) for src in parser.srcs if "://" not in src}
    if name == "benchmarks":
        assert len(wanted) >= 2, parser.srcs  # the figures of the benchmark page
    for path in wanted:
        assert (out / path.lstrip("/")).is_file(), path
        assert served.get(path) == 200, (path, sorted(served))
    if os.environ.get("LONGCTX_UPDATE_SCREENSHOTS") == "1":
        shutil.copy(shot, REPO / "docs" / "img" / shot.name)
