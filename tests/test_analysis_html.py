"""The HTML report, opened in a real headless Chromium: it renders the table and every image, asks the
network for nothing, logs no console error; and bad --html paths are exit 2.

Chromium comes from the OS packages (``./setup.sh`` installs Debian's ``chromium`` as root). The
browser is driven over the DevTools protocol through a pipe (``--remote-debugging-pipe``), with
the standard library only. Without Chromium the browser tests skip, except under CI, where they fail.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from test_analysis_report import fake_sweep, ten_configs

from pah.cli import main

# --------------------------------------------------------------------------- Chromium over the DevTools protocol


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome", "chromium-headless-shell"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Browser:
    def __init__(self, exe: str, profile: Path, timeout: float = 60.0):
        self.timeout = timeout
        cmd_r, cmd_w = os.pipe()  # we write commands; chromium reads them on its fd 3
        res_r, res_w = os.pipe()  # chromium writes replies on its fd 4
        hi_r, hi_w = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (cmd_r, res_w))
        os.close(cmd_r)
        os.close(res_w)

        def child() -> None:
            os.dup2(hi_r, 3)
            os.dup2(hi_w, 4)

        self.proc = subprocess.Popen(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe", "--no-first-run",
             "--disable-extensions", "--disable-background-networking", "--disable-sync", "--disable-dev-shm-usage",
             f"--user-data-dir={profile}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            preexec_fn=child, pass_fds=(3, 4),
        )
        os.close(hi_r)
        os.close(hi_w)
        self._w, self._r = cmd_w, res_r
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []

    def close(self) -> None:
        for fd in (self._w, self._r):
            try:
                os.close(fd)
            except OSError:
                pass
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no message from chromium")
            ready, _, _ = select.select([self._r], [], [], left)
            if ready:
                chunk = os.read(self._r, 1 << 20)
                if not chunk:
                    raise RuntimeError("chromium closed the pipe: " + self.proc.stderr.read().decode(errors="replace")[-2000:])
                self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            m = self._read_message(deadline)
            if m.get("id") == self._id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)

    def wait_event(self, method: str, session: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        for i, m in enumerate(self.events):
            if m.get("method") == method and m.get("sessionId") == session:
                return self.events.pop(i)
        while True:
            m = self._read_message(deadline)
            if m.get("method") == method and m.get("sessionId") == session:
                return m
            self.events.append(m)

    def open(self, url: str, screenshot: Path, width: int = 1280) -> dict:
        """Load ``url`` in a new tab; return what a person would see go wrong, and what rendered."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        s = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable", session=s)
        self.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": 900, "deviceScaleFactor": 1,
                                                          "mobile": False}, session=s)
        self.send("Page.navigate", {"url": url}, session=s)
        self.wait_event("Page.loadEventFired", s, self.timeout)
        js = """JSON.stringify({
            images: [...document.images].map(i => ({alt: i.alt, ok: i.complete && i.naturalWidth > 0,
                                                     w: i.naturalWidth, h: i.naturalHeight})),
            tables: [...document.querySelectorAll('table')].map(t => t.rows.length),
            text: document.body.innerText,
            title: document.title})"""
        page = json.loads(self.send("Runtime.evaluate", {"expression": js, "returnByValue": True}, session=s)["result"]["value"])
        size = self.send("Page.getLayoutMetrics", session=s)["cssContentSize"]
        h = min(int(size["height"]), 16000)
        shot = self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True,
                                                    "clip": {"x": 0, "y": 0, "width": width, "height": h, "scale": 1}},
                         session=s)
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        mine = [e for e in self.events if e.get("sessionId") == s]
        page["console_errors"] = (
            [e["params"]["args"][0].get("value", "") for e in mine
             if e["method"] == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "assert")]
            + [e["params"]["exceptionDetails"].get("text", "") for e in mine if e["method"] == "Runtime.exceptionThrown"]
            + [e["params"]["entry"].get("text", "") for e in mine
               if e["method"] == "Log.entryAdded" and e["params"]["entry"]["level"] == "error"])
        page["requests"] = [e["params"]["request"]["url"][:80] for e in mine if e["method"] == "Network.requestWillBeSent"]
        self.send("Target.closeTarget", {"targetId": target})
        return page


def _ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    exe = find_chromium()
    if exe is None:
        why = "no chromium on PATH (./setup.sh installs Debian's chromium as root; or apt-get install chromium)"
        if _ci():
            pytest.fail(f"CI is set and {why}")
        pytest.skip(why)
    b = Browser(exe, tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield b
    finally:
        b.close()


def _colourful_pixels(png: Path) -> float:
    """The share of saturated pixels in a screenshot: text and tables are grey, plots are colour."""
    from PIL import Image

    im = np.asarray(Image.open(png).convert("RGB")).astype(int)
    sat = im.max(axis=2) - im.min(axis=2)
    return float((sat > 60).mean())


def test_the_browser_check_sees_what_goes_wrong(browser, tmp_path):
    """A page with a broken image, a network fetch and a script error: the check reports all three."""
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><head><title>bad</title></head><body><table><tr><td>x</td></tr></table>'
                   '<img alt="broken" src="data:image/png;base64,AAAA"><img alt="net" src="http://example.invalid/x.png">'
                   '<script>console.error("boom"); undefined_fn();</script></body></html>')
    page = browser.open(bad.as_uri(), tmp_path / "bad.png")
    assert [i["ok"] for i in page["images"]] == [False, False]
    assert any("boom" in e for e in page["console_errors"]) and len(page["console_errors"]) >= 2
    assert any(u.startswith("http://example.invalid") for u in page["requests"])


def test_sweep_report_renders_in_chromium(browser, tmp_path, capsys):
    sweep = tmp_path / "sweep"
    cid = fake_sweep(sweep)
    optuna = pytest.importorskip("optuna")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(study_name="toy", storage=f"sqlite:///{sweep / 'optuna.db'}", direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: t.suggest_float("train.lr", 5e-4, 1e-2, log=True) + 0.01 * t.suggest_float(
        "method.lambda_kd", 0.1, 2.0), n_trials=12)

    report = tmp_path / "report.html"
    assert main(["analyze", str(sweep), "--html", str(report)]) == 0
    assert f"html: {report}" in capsys.readouterr().err
    text = report.read_text()
    assert "<script" not in text and "http://" not in text and "https://" not in text  # nothing to fetch, nothing to run

    shot = tmp_path / "report.png"
    page = browser.open(report.as_uri(), shot)
    assert page["console_errors"] == []
    assert all(u.startswith(("file://", "data:")) for u in page["requests"]), page["requests"]
    # every plot renders: a heatmap and task curves per config, the average curves, the trade-off, the importances
    assert len(page["images"]) == 2 * 2 + 2 + 1 and all(i["ok"] and i["w"] > 200 for i in page["images"]), page["images"]
    # the seed-averaged table: a header and one row per config; the comparison, trial states, spec, environment
    assert page["tables"][0] == 1 + 2
    body = page["text"]
    assert f"{cid['best']} (best)" in body and f"{cid['base']} (base)" in body
    assert "the search beat the base config" in body
    assert "stopped early" in body and "NonFiniteLoss: non-finite loss at task 1/5, epoch 1, step 2" in body
    assert "Optuna hyperparameter importances" in body and "train.lr" in body
    assert "base: split-digits-pah" in body  # the spec, as YAML
    assert "torch 2.x" in body and "search phase (wall)" in body
    # the screenshot shows the plots (colour) and not a blank page
    assert shot.stat().st_size > 50_000 and _colourful_pixels(shot) > 0.01


def test_report_of_plain_directories(browser, tmp_path):
    """Not a sweep (no sweep.json): the table, the plots and the trials, no comparison."""
    ten_configs(tmp_path / "runs", seeds=2)
    report = tmp_path / "r.html"
    assert main(["analyze", str(tmp_path / "runs"), "--html", str(report)]) == 0
    page = browser.open(report.as_uri(), tmp_path / "r.png")
    # past DETAIL_GROUPS (3) configs, the best 3 get a heatmap and task curves each; all 10 are in the table
    from analysis.html import DETAIL_GROUPS

    assert DETAIL_GROUPS < 10
    assert page["console_errors"] == [] and len(page["images"]) == 2 * DETAIL_GROUPS + 2
    assert all(i["ok"] for i in page["images"]) and page["tables"][0] == 1 + 10
    assert f"Per-group plots: the {DETAIL_GROUPS} groups with the highest mean test ACC" in page["text"]
    assert "Best config vs base config" not in page["text"] and "20 finished" in page["text"]


@pytest.mark.parametrize("target, needle", [("nope/report.html", "does not exist"), (".", "is a directory")])
def test_bad_html_path_exits_2_and_writes_nothing(tmp_path, capsys, target, needle):
    ten_configs(tmp_path / "runs", seeds=1)
    before = sorted(p for p in tmp_path.rglob("*"))
    rc = main(["analyze", str(tmp_path / "runs"), "--html", str(tmp_path / target)])
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert rc == 2 and out == "" and len(lines) == 1 and lines[0].startswith("error: --html") and needle in lines[0], err
    assert sorted(p for p in tmp_path.rglob("*")) == before
