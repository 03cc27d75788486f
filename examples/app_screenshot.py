"""Serve ``factorcl-app`` over a folder, type a query into it in headless Chromium, and save a
screenshot of the answer (what tests/test_app.py does, and how docs/images/factorcl_app.png was made).

    python examples/app_screenshot.py --model outputs/demo/factorcl_ssl/model --images photos/ \\
        --query "a small circle at the top" --out docs/images/factorcl_app.png

Needs Debian's ``chromium`` and ``chromium-driver`` (``make test`` installs them as root) and
``selenium`` (``make install`` installs it). Prints the image column of the app's score table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

# Chromium without anything that reaches out: no background requests, updates, sync or first-run pages.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1280,1500")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serve(command: list[str], port: int, cwd: str | os.PathLike, timeout: float = 90.0) -> subprocess.Popen:
    """Start ``command`` (a factorcl-app line) on ``port``; return once the page answers."""
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1"}
    server = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"factorcl-app exited {server.returncode}: {server.stdout.read()[-3000:]}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).close()
            return server
        except OSError:
            time.sleep(0.5)
    server.kill()
    raise RuntimeError(f"factorcl-app did not answer on port {port} within {timeout} s")


def query_in_chromium(url: str, query: str, screenshot: str | os.PathLike, profile: str | os.PathLike) -> list[str]:
    """Type ``query`` into the served page, press Search, wait for the gallery and the score
    table, save a screenshot; returns the table's image column, best first."""
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium never looks for a driver online: both are given
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):  # a fresh profile each time
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)

    def score_rows(d):  # Gradio's table is virtual: rows are role=row, the header's hold <th>
        rows = [row for row in d.find_elements(By.CSS_SELECTOR, "#scores [role=row]")
                if not row.find_elements(By.CSS_SELECTOR, "th")]
        return [row.text.split() for row in rows if len(row.text.split()) == 3]

    try:
        driver.get(url)
        wait = WebDriverWait(driver, 90)
        wait.until(lambda d: "Indexed" in d.find_element(By.ID, "status").text)
        driver.find_element(By.CSS_SELECTOR, "#query textarea").send_keys(query)
        driver.find_element(By.ID, "search").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#gallery img") and score_rows(d))
        time.sleep(1.0)  # let the thumbnails paint
        driver.save_screenshot(str(screenshot))
        return [row[1] for row in score_rows(driver)]
    finally:
        driver.quit()


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--images", required=True)
    parser.add_argument("--query", required=True)
    parser.add_argument("--out", required=True, help="the screenshot (.png)")
    args = parser.parse_args(argv)
    for tool in ("chromium", "chromedriver"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is not installed: apt-get install chromium chromium-driver")
    port = free_port()
    app = Path(sys.executable).with_name("factorcl-app")
    server = serve([str(app), "--model", args.model, "--images", args.images], port, Path.cwd())
    try:
        with tempfile.TemporaryDirectory() as profile:
            names = query_in_chromium(f"http://127.0.0.1:{port}/", args.query, args.out, profile)
    finally:
        server.terminate()
        server.wait(timeout=30)
    print("\n".join(names))
    return names


if __name__ == "__main__":
    main()
