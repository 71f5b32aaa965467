"""Time from an operator's action in the web console to every open console showing it.

Starts a real control plane (embedded store, examples/national.yaml, operator tokens), agents for a
few centers and `callroute console`, opens N consoles in headless Chromium (Debian's, driven by
Playwright), and repeats: operator A drains or reopens a center from its page; the clock stops when
every open console shows the new state. Prints p50/p99 over the actions.

    .venv/bin/python -m bench.console_latency [--actions 20] [--consoles 3] [--screenshots docs/console]

`running`, `browser` and `login` are also the e2e test's (tests/test_console_e2e.py) set-up.
Must not: send traffic anywhere but 127.0.0.1, or leave a process running.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NATIONAL = ROOT / "examples" / "national.yaml"
CHROMIUM = "/usr/bin/chromium"
# what the brief and Debian's chromium need to run headless in a container without reaching out
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# name -> role; each gets a random token (ada: topology changes are an admin's)
OPERATORS = {"alice": "operator", "bob": "operator", "victor": "viewer", "ada": "admin"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def poll(fn: Callable[[], Any], deadline_s: float, what: str, every_s: float = 0.05) -> Any:
    end = time.monotonic() + deadline_s
    last: Any = None
    while time.monotonic() < end:
        with contextlib.suppress(OSError):
            last = fn()
            if last:
                return last
        time.sleep(every_s)  # polling a condition with a deadline
    raise AssertionError(f"{what} not reached in {deadline_s} s (last: {last!r})")


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return e.code


class Stage:
    """A control plane, agents and one console, as real processes on loopback."""

    def __init__(self, tmp: Path, *, two_person: bool = True, agents: tuple[str, ...] = ("wuhan", "chengdu"),
                 console: bool = True) -> None:
        self.tmp = tmp
        self.two_person = two_person
        self.agent_centers = agents
        self.with_console = console
        self.tokens = {name: hashlib.sha256(f"{name}-{os.urandom(8).hex()}".encode()).hexdigest()
                       for name in OPERATORS}
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.cp = f"127.0.0.1:{free_port()}"
        self.console_port = free_port()
        self.url = f"http://127.0.0.1:{self.console_port}"

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"{name}.log", "wb")  # noqa: SIM115 - the child's for its life
        p = subprocess.Popen([sys.executable, *argv], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                             start_new_session=True)
        log.close()
        self.procs.append((name, p))
        return p

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")[-3000:]

    def start(self) -> Stage:
        tokens_file = self.tmp / "tokens.yaml"
        tokens_file.write_text(json.dumps({"tokens": {
            hashlib.sha256(tok.encode()).hexdigest(): {"name": name, "role": OPERATORS[name]}
            for name, tok in self.tokens.items()}}))
        cfg = self.tmp / "cp.json"
        cfg.write_text(json.dumps({"require_two_person": self.two_person, "tokens": str(tokens_file)}))
        ports = self.tmp / "cp.ports"
        cp = self._spawn("controlplane", [
            "-m", "controlplane.service", "--operator-from-request",
            "--topology", str(NATIONAL), "--store", "embedded",
            "--listen", self.cp, "--metrics", f"127.0.0.1:{free_port()}", "--config", str(cfg),
            "--port-file", str(ports)])
        poll(lambda: ports.exists() or cp.poll() is not None, 30, "control plane")
        assert cp.poll() is None, self.log("controlplane")
        for c in self.agent_centers:
            (self.tmp / c).mkdir(exist_ok=True)
            self._spawn(f"agent-{c}", [
                "-m", "controlplane.cli", "agent", "--center", c, "--controlplane", self.cp,
                "--http", f"127.0.0.1:{free_port()}", "--acd", "simulated", "--state-dir", str(self.tmp / c),
                "--topology", str(NATIONAL)])
        if not self.with_console:
            return self
        console = self._spawn("console", ["-m", "controlplane.cli", "console", "--endpoint", self.cp,
                                          "--listen", f"127.0.0.1:{self.console_port}"])
        poll(lambda: console.poll() is not None or http_status(self.url + "/login") == 200, 30, "console")
        assert console.poll() is None, self.log("console")
        return self

    def close(self) -> None:
        for _, p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for _, p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()



@contextlib.contextmanager
def running(tmp: Path, **kwargs: Any) -> Iterator[Stage]:
    """A started Stage, stopped on the way out however the block ends (a failed start too)."""
    stage = Stage(tmp, **kwargs)
    try:
        yield stage.start()
    finally:
        stage.close()


@contextlib.contextmanager
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


def login(b: Any, stage: Stage, name: str, viewport: dict[str, int] | None = None) -> Any:
    """A new browser context (its own cookies: another person) logged in as `name`; its page."""
    ctx = b.new_context(viewport=viewport or {"width": 1440, "height": 900})
    page = ctx.new_page()
    page.goto(stage.url + "/login")
    page.fill("input[name=token]", stage.tokens[name])
    page.click("form[action='/login'] button")
    page.wait_for_url(stage.url + "/")
    return page


def admin_cell(page: Any, center: str) -> Any:
    return page.locator(f"#centers-table tr[data-center='{center}']")


# in an open page: the browser's clock when `selector` first matches (the live fragment arrived)
WATCH = """(selector) => {
  window.__seenAt = document.querySelector(selector) ? Date.now() : null;
  new MutationObserver((_, obs) => {
    if (window.__seenAt || !document.querySelector(selector)) return;
    window.__seenAt = Date.now();
    obs.disconnect();
  }).observe(document.body, {subtree: true, childList: true});
}"""


def measure(actions: int, consoles: int, screenshots: str = "") -> dict[str, float]:
    agents = ("wuhan", "chengdu", "beijing")
    with tempfile.TemporaryDirectory(prefix="console-bench-") as d, \
            running(Path(d), two_person=False, agents=agents) as stage, browser() as b:
        pages = [login(b, stage, "alice")] + [login(b, stage, "bob") for _ in range(consoles - 1)]
        actor = pages[0]
        took: list[float] = []  # click -> every console shows it
        spread: list[float] = []  # the control plane's answer -> every console shows it
        center = "beijing"
        for i in range(actions):
            verb, shown = ("drain", "draining") if i % 2 == 0 else ("open", "open")
            selector = f"#centers-table tr[data-center='{center}'][data-admin='{shown}']"
            for p in pages[1:]:
                p.evaluate(WATCH, selector)
            actor.fill("#state-reason", f"bench action {i}")
            actor.select_option("#state-center", center)
            # every time below is the browser's own clock (one process for all pages), so the
            # driving process's scheduling on a busy machine does not count
            clicked = actor.evaluate("Date.now()")
            with actor.expect_navigation():
                actor.click(f"#btn-{verb}")
            assert "APPLIED" in actor.locator(".flash").first.inner_text()
            nav = actor.evaluate("(() => { const n = performance.getEntriesByType('navigation')[0];"
                                 " return [performance.timeOrigin + (n.redirectEnd || n.responseStart),"
                                 " performance.timeOrigin + n.responseEnd]; })()")
            answered, actor_shown = nav
            seen = [actor_shown]
            for p in pages[1:]:
                p.wait_for_function("window.__seenAt", timeout=30_000, polling=20)
                seen.append(p.evaluate("window.__seenAt"))
            took.append((max(seen) - clicked) / 1000)
            spread.append((max(seen) - answered) / 1000)
    if screenshots:
        screenshots_of_national(Path(screenshots))
    return {"actions": actions, "consoles": consoles, **percentiles("action", took),
            **percentiles("after_answer", spread)}


def percentiles(name: str, xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    p99 = xs[min(len(xs) - 1, round(0.99 * (len(xs) - 1)))]
    return {f"{name}_p50_s": xs[len(xs) // 2], f"{name}_p99_s": p99,
            f"{name}_max_s": xs[-1]}


def screenshots_of_national(out: Path) -> None:
    """The network page (wuhan closed), the plan with predictions and the wallboard, as PNGs, with an
    agent for every center of the national example."""
    from controlplane.core.topology import load_topology

    centers = tuple(topology_center_ids(load_topology(NATIONAL)))
    with tempfile.TemporaryDirectory(prefix="console-shots-") as d, \
            running(Path(d), two_person=False, agents=centers) as stage, browser() as b:
        page = login(b, stage, "alice")
        # every agent reporting first: a fresh network shows centers as down until then
        page.wait_for_function(
            f"document.querySelectorAll('#centers-table tr[data-status=healthy]').length == {len(centers)}",
            timeout=60_000)
        shoot(b, stage, page, out)


def topology_center_ids(topo: Any) -> list[str]:
    return [c.id for c in topo.centers]


def shoot(b: Any, stage: Stage, page: Any, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    page.goto(stage.url + "/")
    page.fill("#state-reason", "flood: building evacuated")
    page.select_option("#state-center", "wuhan")
    page.click("#btn-close")
    page.wait_for_selector("#routes-table tr[data-branch='hubei'][data-kind='dr']", timeout=10_000)
    page.screenshot(path=str(out / "network.png"), full_page=False)
    page.goto(stage.url + "/plan")
    page.locator("#predictions").scroll_into_view_if_needed()
    page.screenshot(path=str(out / "plan.png"), full_page=False)
    wall = login(b, stage, "victor", viewport={"width": 1920, "height": 1080})
    wall.goto(stage.url + "/wallboard")
    wall.wait_for_selector(".tile[data-center='wuhan'][data-admin='closed']")
    wall.screenshot(path=str(out / "wallboard.png"))
    shoot_topology(b, stage, out)


def shoot_topology(b: Any, stage: Stage, out: Path) -> None:
    """The topology page after an admin applied overload treatment chains through the console (the
    Wuhan 2020 guidance to WeChat): version, history, chains. Needs a stage without two-person."""
    import msgspec

    from controlplane.core.model import TreatmentAction, TreatmentStep
    from controlplane.core.topology import dump_topology, load_topology

    t = load_topology(NATIONAL)
    chain = (TreatmentStep(60.0, TreatmentAction.CALLBACK_OFFER),
             TreatmentStep(180.0, TreatmentAction.ANNOUNCEMENT, "ann_busy_95533"),
             TreatmentStep(300.0, TreatmentAction.CHANNEL_GUIDANCE, "wechat_95533"))
    t = msgspec.structs.replace(t, policy=msgspec.structs.replace(t.policy, treatments=chain))
    t = msgspec.structs.replace(t, branches=tuple(
        msgspec.structs.replace(x, skill_treatments={"credit_card": chain[2:]}) if x.id in ("hubei", "hunan")
        else x for x in t.branches))
    admin = login(b, stage, "ada", viewport={"width": 1440, "height": 1200})
    admin.goto(stage.url + "/topology")
    admin.fill("#topology-text", dump_topology(t))
    with admin.expect_navigation():
        admin.click("#btn-topology-check")
    admin.fill("#topology-reason-input", "Wuhan 2020: guide waiting callers to WeChat past 5 minutes")
    with admin.expect_navigation():
        admin.click("#btn-topology-apply")
    admin.screenshot(path=str(out / "topology.png"), full_page=False)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--actions", type=int, default=20)
    ap.add_argument("--consoles", type=int, default=3, help="open consoles (browser contexts), >= 1")
    ap.add_argument("--screenshots", default="", help="also save the four screenshots in this folder")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.actions < 1 or args.consoles < 1:
        ap.error("--actions and --consoles must be >= 1")
    r = measure(args.actions, args.consoles, args.screenshots)
    if args.json:
        print(json.dumps(r))
    else:
        for name, what in (("action", "click -> every console shows it"),
                           ("after_answer", "control plane's answer -> every console shows it")):
            print(f"{what} ({r['consoles']} consoles, {r['actions']} actions): "
                  f"p50 {r[name + '_p50_s'] * 1000:.0f} ms, p99 {r[name + '_p99_s'] * 1000:.0f} ms, "
                  f"max {r[name + '_max_s'] * 1000:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
