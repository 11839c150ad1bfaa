"""Screenshots of the HTML pages for the README (docs/*.png), taken with headless Chromium via Selenium.

    .venv/bin/python scripts/page_screenshots.py PAGE.html OUT.png [--anchor ID] [--width 1280 --height 900]

Needs Debian's chromium and chromium-driver (see scripts/test.sh). The PNG is reduced to a 256-colour
palette so it stays small enough to commit.
"""

from __future__ import annotations

import argparse
import io
import shutil
from pathlib import Path

from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--anchor", default="", help="Element id to scroll to first.")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=900)
    parser.add_argument("--scale", type=float, default=0.75, help="Resize factor of the saved image.")
    args = parser.parse_args()
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                     f"--window-size={args.width},{args.height}"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        driver.get(args.page.resolve().as_uri())
        if args.anchor:
            driver.execute_script("document.getElementById(arguments[0]).scrollIntoView()", args.anchor)
        image = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    finally:
        driver.quit()
    size = (int(image.width * args.scale), int(image.height * args.scale))
    image = image.resize(size, Image.LANCZOS).quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    image.save(args.out, optimize=True)
    print(f"{args.out}: {size[0]}x{size[1]}, {args.out.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
