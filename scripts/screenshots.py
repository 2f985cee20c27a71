"""Screenshots of the web app's three tabs for the README: runs the browser tests (the real server, headless
Chromium, CVC-ClinicDB frames and a fake camera) with POLYPSEG_SCREENSHOTS set, so the pictures come from
the same code the tests check.

    python scripts/screenshots.py            # writes docs/img/images.png, video.png, live.png, settings.png
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "docs" / "img"
    env = {**os.environ, "POLYPSEG_SCREENSHOTS": str(out.resolve())}
    code = subprocess.call([sys.executable, "-m", "pytest", "-q", "-m", "browser", "tests/test_serve_browser.py"],
                           cwd=REPO, env=env)
    for name in ("images", "video", "live", "settings"):
        path = out / f"{name}.png"
        print(f"{path}: {path.stat().st_size // 1024} KB" if path.is_file() else f"{path}: missing")
    return code


if __name__ == "__main__":
    sys.exit(main())
