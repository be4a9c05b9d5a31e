"""Render a report.html in headless Chromium to a PNG screenshot, to look at the page as a browser lays it out.

Not a test: Chromium is not on a clean machine (Debian: ``apt-get install chromium``). Usage:

    python scripts/render_report.py out/lenet/report.html -o report.png [--width 1200 --height 3000]

The page is self-contained (inline CSS, images as data URIs), so Chromium needs no network; it runs without a
sandbox, GPU, background networking or first-run setup, in a temporary profile directory removed afterwards.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")


def find_browser() -> str:
    """The first Chromium-like browser on PATH; exits with a message naming the install command if none."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    sys.exit(f"error: none of {', '.join(BROWSERS)} is on PATH; install one (Debian: apt-get install -y chromium).")


def render(html: Path, png: Path, width: int, height: int, timeout: float = 120.0) -> Path:
    """Screenshot ``html`` into ``png`` at ``width`` x ``height`` CSS pixels; return ``png``."""
    if not html.is_file():
        sys.exit(f"error: {html} does not exist; write it with quanta quantize or quanta report DIR.")
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="render-report-") as profile:
        command = [
            find_browser(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--hide-scrollbars",
            f"--screenshot={png.resolve()}",
            f"--window-size={width},{height}",
            html.resolve().as_uri(),
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0 or not png.is_file():
        sys.exit(f"error: chromium exited with {done.returncode}: {done.stderr.strip()[-2000:]}")
    return png


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", type=Path, help="the report.html to render")
    parser.add_argument("-o", "--output", type=Path, default=Path("report.png"), help="the PNG to write")
    parser.add_argument("--width", type=int, default=1200)
    parser.add_argument("--height", type=int, default=3000)
    args = parser.parse_args()
    path = render(args.html, args.output, args.width, args.height)
    print(f"wrote {path} ({path.stat().st_size:,} bytes, {args.width}x{args.height})")


if __name__ == "__main__":
    main()
