#!/usr/bin/env python
"""Screenshot an HTML report with headless Chromium and check the image is not blank.

    python scripts/screenshot_report.py reports/<run_id>/report.html [-o shot.png]

Prints a JSON line (png path, size, share of non-white pixels, distinct colours) and exits
1 when the page rendered blank, 2 when no Chromium binary is found (install one with
``apt-get install -y chromium``, or set ``CHROMIUM``).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def find_chromium() -> str | None:
    """``$CHROMIUM`` or the first Chromium/Chrome binary on PATH."""
    env = os.environ.get("CHROMIUM")
    if env and Path(env).exists():
        return env
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def screenshot(html: str | Path, png: str | Path, width: int = 1280, height: int = 2400, timeout_s: float = 120.0,
               binary: str | None = None) -> Path:
    """Render ``html`` in headless Chromium and write a ``width`` x ``height`` PNG."""
    binary = binary or find_chromium()
    if binary is None:
        raise FileNotFoundError("no chromium binary found (apt-get install -y chromium, or set CHROMIUM)")
    html, png = Path(html).resolve(), Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pld-chromium-") as profile:
        cmd = [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--hide-scrollbars", "--no-first-run", "--disable-extensions", f"--user-data-dir={profile}",
               f"--window-size={width},{height}", f"--screenshot={png}", html.as_uri()]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0 or not png.exists():
        raise RuntimeError(f"chromium failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return png


def image_stats(png: str | Path) -> dict:
    """Share of non-white pixels and number of distinct colours (a blank page has ~0 and 1)."""
    import numpy as np
    from PIL import Image

    img = np.asarray(Image.open(png).convert("RGB"), dtype=np.int16)
    non_white = (np.abs(255 - img).sum(axis=2) > 30).mean()
    colours = len(np.unique(img.reshape(-1, 3)[::7], axis=0))
    return {"png": str(png), "width": int(img.shape[1]), "height": int(img.shape[0]),
            "non_white_share": round(float(non_white), 4), "colours": int(colours)}


def is_blank(stats: dict) -> bool:
    return stats["non_white_share"] < 0.01 or stats["colours"] < 8


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("html")
    ap.add_argument("-o", "--output", help="PNG path (default: next to the HTML)")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=2400)
    args = ap.parse_args(argv)
    if find_chromium() is None:
        print("no chromium binary found (apt-get install -y chromium, or set CHROMIUM)", file=sys.stderr)
        return 2
    out = args.output or str(Path(args.html).with_suffix(".png"))
    stats = image_stats(screenshot(args.html, out, args.width, args.height))
    stats["blank"] = is_blank(stats)
    print(json.dumps(stats))
    return 1 if stats["blank"] else 0


if __name__ == "__main__":
    sys.exit(main())
