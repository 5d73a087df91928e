"""The session inspector (`GET /ui`) in headless Chromium: Debian's `chromium`, driven by playwright
(never its own browser download). The gateway runs for real with two tenants, the shared real
Redis and the fake upstream; tenant acme's session is a real trace replayed with Claude Code's
compaction a third of the way in (bench.lifecycle_replay), the fake model answering and recalling
from its prompt only (bench.peers.model.TraceModel).

Screenshots go to `$CLAWVM_UI_SCREENSHOTS` when set (the README's comes from
`CLAWVM_UI_SCREENSHOTS=bench/results/ui`), else to the test's temporary directory.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from bench.fake_upstream import FakeUpstream, serve
from bench.lifecycle_replay import run
from bench.peers.model import TraceModel
from bench.traces import load_traces, traces_dir
from bench.ui import BROWSER_FLAGS, chromium_path
from gateway.api.app import create_app
from gateway.settings import Overrides, load_settings

pytestmark = pytest.mark.browser

# tenant names of this module's own: the Redis server is shared by the whole test session
CONFIG = "tenants:\n  inspected-a:\n    api_keys: [sk-ui-acme]\n  inspected-b:\n    api_keys: [sk-ui-globex]\n"
TRACE = "taubench-airline-004"
INJECTOR = "claude_code_compact"
SESSION = f"lifecycle-{TRACE}-{INJECTOR}"  # the id bench.lifecycle_replay gives the replay
SMALL = "ui-small-session"
BUDGET = 2500

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the test extras (scripts/install)")


@dataclass(frozen=True)
class Inspected:
    root: str
    shots: Path


@pytest.fixture(scope="module")
def inspected(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Inspected]:
    traces = [t for t in load_traces(traces_dir()) if t.name == TRACE] if traces_dir().is_dir() else []
    if not traces:
        pytest.skip(f"no real trace {TRACE} (set CLAWVM_TRACES)")
    directory = tmp_path_factory.mktemp("ui")
    (directory / "config.yaml").write_text(CONFIG)
    shots = Path(os.environ.get("CLAWVM_UI_SCREENSHOTS") or directory / "shots")
    shots.mkdir(parents=True, exist_ok=True)
    model = TraceModel()
    fake = FakeUpstream(model)
    with serve(fake.app) as upstream:
        overrides = Overrides(upstream=upstream, store=redis_url, budget=BUDGET)
        settings = load_settings(directory / "config.yaml", {}, overrides)
        with serve(create_app(settings)) as url:
            auth = {"authorization": "Bearer sk-ui-acme"}
            with httpx.Client(timeout=60, headers=auth) as client:
                record = run(client, url, fake, traces[0], INJECTOR, model=model)
                assert record is not None and record.event == "compaction", record
                small = [{"role": "user", "content": "Book me a window seat, please."}]
                answer = client.post(
                    url + "/chat/completions",
                    json={"model": "gpt-4o", "messages": small},
                    headers={"x-clawvm-session": SMALL},
                )
                assert answer.status_code == 200, answer.text
            yield Inspected(url.removesuffix("/v1"), shots)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    chromium = chromium_path()
    if not Path(chromium).exists():
        pytest.skip("no chromium: scripts/install installs Debian's chromium package")
    with sync_api.sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=chromium, headless=True, args=list(BROWSER_FLAGS))
        yield launched
        launched.close()


@pytest.fixture
def page(browser: object) -> Iterator[object]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})  # type: ignore[attr-defined]
    tab = context.new_page()
    failures: list[str] = []
    tab.on("pageerror", lambda error: failures.append(str(error)))
    yield tab
    context.close()
    assert not failures, failures  # no script error on any view


def sign_in(page: object, root: str, key: str, hash_: str = "#/") -> None:
    page.goto(f"{root}/ui{hash_}")  # type: ignore[attr-defined]
    page.fill("#key", key)  # type: ignore[attr-defined]
    page.click("#login-form button")  # type: ignore[attr-defined]
    ready(page, hash_)


def ready(page: object, hash_: str) -> None:
    page.wait_for_function("h => document.body.dataset.ready === h", arg=hash_)  # type: ignore[attr-defined]


def go(page: object, hash_: str) -> None:
    page.evaluate("h => { location.hash = h; }", hash_)  # type: ignore[attr-defined]
    ready(page, hash_)


def api(inspected: Inspected, path: str, key: str = "sk-ui-acme") -> httpx.Response:
    return httpx.get(f"{inspected.root}{path}", headers={"authorization": f"Bearer {key}"}, timeout=30)


def test_without_a_key_the_page_asks_for_one_and_shows_nothing(inspected: Inspected, page: object) -> None:
    page.goto(f"{inspected.root}/ui#/s/{SESSION}")  # type: ignore[attr-defined]
    page.wait_for_selector("#login:not([hidden])")  # type: ignore[attr-defined]
    assert SESSION not in page.inner_text("body")  # type: ignore[attr-defined]
    page.fill("#key", "sk-not-a-key")  # type: ignore[attr-defined]
    page.click("#login-form button")  # type: ignore[attr-defined]
    page.wait_for_function("() => document.getElementById('login-error').textContent.length > 0")  # type: ignore[attr-defined]
    assert "Incorrect API key" in page.inner_text("#login-error")  # type: ignore[attr-defined]
    assert page.inner_text("#view") == ""  # type: ignore[attr-defined]


def test_the_sessions_list_shows_the_tenants_sessions_newest_first(inspected: Inspected, page: object) -> None:
    sign_in(page, inspected.root, "sk-ui-acme")
    rows = page.locator("table.sessions tbody tr")  # type: ignore[attr-defined]
    ids = [rows.nth(i).locator("td").first.inner_text() for i in range(rows.count())]
    assert ids[:2] == [SMALL, SESSION]  # the small session was used last
    replay = rows.nth(1).locator("td").all_inner_texts()
    listed = api(inspected, "/v1/clawvm/sessions").json()["data"][1]
    assert listed["id"] == SESSION and listed["lifecycle_events"] >= 2  # its start and the compaction
    assert replay[1] == f"{listed['turns']:,}" and replay[4] == f"{listed['tokens_forwarded']:,}"
    assert "compaction" in replay[7]
    page.screenshot(path=str(inspected.shots / "sessions.png"), full_page=True)  # type: ignore[attr-defined]


def test_a_sessions_heat_map_after_a_replayed_compaction(inspected: Inspected, page: object) -> None:
    sign_in(page, inspected.root, "sk-ui-acme", f"#/s/{SESSION}")
    timeline = api(inspected, f"/v1/clawvm/sessions/{SESSION}/timeline").json()
    canvas = page.locator("#heatmap canvas")  # type: ignore[attr-defined]
    assert int(canvas.get_attribute("data-rows")) == len(timeline["heat"]["pages"]) > 10
    assert int(canvas.get_attribute("data-columns")) == len(timeline["turns"])
    # the compaction turn is marked in the timeline, with its evidence among the events
    assert page.locator("table.timeline tr.event", has_text="compaction").count() == 1  # type: ignore[attr-defined]
    evidence = [e["evidence"] for e in timeline["events"] if e.get("event") == "compaction"]
    assert evidence and evidence[0] in page.inner_text("body")  # type: ignore[attr-defined]
    # the pixels: pages at full and pages degraded or cut, as the rows say
    colours = page.evaluate(COUNT_COLOURS)  # type: ignore[attr-defined]
    letters = "".join(timeline["heat"]["rows"])
    assert colours["full"] > 0
    assert any(letter in letters for letter in "CSP-")  # the budget made the gateway page things out
    assert sum(colours[level] for level in ("compressed", "structured", "pointer", "absent")) > 0
    page.screenshot(path=str(inspected.shots / "session.png"))  # type: ignore[attr-defined]  # the README's
    page.screenshot(path=str(inspected.shots / "session-full.png"), full_page=True)  # type: ignore[attr-defined]
    page.locator("#heatmap").screenshot(path=str(inspected.shots / "heatmap.png"))  # type: ignore[attr-defined]


COUNT_COLOURS = """() => {
  const canvas = document.querySelector('#heatmap canvas');
  const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  const want = {full: [11, 61, 145], compressed: [47, 116, 192], structured: [106, 168, 224],
                pointer: [185, 214, 242], absent: [236, 239, 242]};
  const out = Object.fromEntries(Object.keys(want).map(k => [k, 0]));
  for (let i = 0; i < data.length; i += 4) {
    for (const [k, [r, g, b]] of Object.entries(want)) {
      if (data[i] === r && data[i + 1] === g && data[i + 2] === b) out[k] += 1;
    }
  }
  return out;
}"""


def test_a_pages_four_representations_side_by_side(inspected: Inspected, page: object) -> None:
    timeline = api(inspected, f"/v1/clawvm/sessions/{SESSION}/timeline").json()
    evidence = [p["id"] for p in timeline["heat"]["pages"] if p["type"] == "evidence"]
    assert evidence
    page_id = evidence[0]
    sign_in(page, inspected.root, "sk-ui-acme", f"#/s/{SESSION}/p/{page_id}")
    view = api(inspected, f"/v1/clawvm/sessions/{SESSION}/pages/{page_id}").json()
    panels = page.locator("#representations .repr")  # type: ignore[attr-defined]
    assert [panels.nth(i).get_attribute("data-level") for i in range(4)] == [
        "full",
        "compressed",
        "structured",
        "pointer",
    ]
    for i, level in enumerate(("full", "compressed", "structured", "pointer")):
        shown = panels.nth(i).locator("pre").inner_text()
        assert view["representations"][level]["text"].strip()[:200] in shown
    body = page.inner_text("body")  # type: ignore[attr-defined]
    assert "evidence" in body and view["provenance"]["role"] in body and view["pin"] in body
    assert page.locator(".history span").count() == len(timeline["turns"])  # type: ignore[attr-defined]
    page.screenshot(path=str(inspected.shots / "page.png"), full_page=True)  # type: ignore[attr-defined]


def test_the_forwarded_prompt_and_its_diff_against_what_the_agent_sent(inspected: Inspected, page: object) -> None:
    timeline = api(inspected, f"/v1/clawvm/sessions/{SESSION}/timeline").json()
    last = timeline["turns"][-1]
    assert last["prompt"]
    prompt = api(inspected, f"/v1/clawvm/sessions/{SESSION}/prompts/{last['prompt']}").json()
    changed = [op for op in prompt["diff"] if op["op"] != "equal"]
    assert changed  # at this budget the gateway degraded or paged out part of the transcript
    sign_in(page, inspected.root, "sk-ui-acme", f"#/s/{SESSION}")
    page.locator("table.timeline a", has_text="prompt").last.click()  # type: ignore[attr-defined]
    ready(page, f"#/s/{SESSION}/t/{last['prompt']}")
    assert page.locator("#forwarded .msg").count() == len(prompt["forwarded"])  # type: ignore[attr-defined]
    first = prompt["forwarded"][0]["content"]
    assert isinstance(first, str) and first[:80] in page.inner_text("#forwarded")  # type: ignore[attr-defined]
    sides = page.locator("#diff .side.del .msg").count() + page.locator("#diff .side.ins .msg").count()  # type: ignore[attr-defined]
    assert sides == sum(
        (op["received"][1] - op["received"][0]) + (op["forwarded"][1] - op["forwarded"][0]) for op in changed
    )
    page.screenshot(path=str(inspected.shots / "prompt.png"), full_page=False)  # type: ignore[attr-defined]


def test_a_second_tenant_sees_nothing_of_the_first(inspected: Inspected, page: object) -> None:
    sign_in(page, inspected.root, "sk-ui-globex")
    assert page.locator(".empty").count() == 1  # type: ignore[attr-defined]
    assert "null" not in page.inner_text("#view")  # type: ignore[attr-defined]
    acme = api(inspected, f"/v1/clawvm/sessions/{SESSION}/timeline").json()
    page_id = acme["heat"]["pages"][0]["id"]
    prompt_id = acme["turns"][-1]["prompt"]
    for hash_ in (f"#/s/{SESSION}", f"#/s/{SESSION}/p/{page_id}", f"#/s/{SESSION}/t/{prompt_id}"):
        go(page, hash_)
        text = page.inner_text("#view")  # type: ignore[attr-defined]
        assert "Not available" in text
        assert page_id not in text.replace(f"#/s/{SESSION}/p/{page_id}", "")
        assert page.locator("canvas, .msg, .repr").count() == 0  # type: ignore[attr-defined]
    listing = api(inspected, "/v1/clawvm/sessions", key="sk-ui-globex")
    assert listing.status_code == 200 and SESSION not in listing.text and SMALL not in listing.text
    for path in ("timeline", f"pages/{page_id}", f"prompts/{prompt_id}"):
        answer = api(inspected, f"/v1/clawvm/sessions/{SESSION}/{path}", key="sk-ui-globex")
        assert answer.status_code == 404 and answer.json()["error"]["code"] == "no_match"  # unknown, as if absent
        assert page_id not in answer.text and "airline" not in answer.text.replace(SESSION, "")
    page.screenshot(path=str(inspected.shots / "other-tenant.png"))  # type: ignore[attr-defined]
