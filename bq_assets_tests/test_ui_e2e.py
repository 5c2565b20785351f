"""The Dagster UI, verified in a real browser (``make e2e``; deselected from the normal run).

Starts the local stack and ``dagster dev`` in temporary directories, then drives headless
Chromium (Debian's ``/usr/bin/chromium`` through Playwright) the way a user would:

* the global asset lineage shows every export's four assets and the arrows between them (the
  edges are read from the drawn SVG and cross-checked with the GraphQL API the UI uses);
* "Materialize all" on one export's group launches a run that succeeds, and the run page and
  the assets' Checks tabs show every check passed;
* a partitioned asset's Partitions tab counts its partitions and shows the one a run loaded;
  a backfill of a date range runs under the backfill policy (one run) and has its page;
* the Automation page lists the daily and weekly schedules, each in its timezone;
* the column lineage of ``databricks/customer_360``'s ``email``: its upstream Lineage tab draws
  the path from the source table (an external asset) to the Databricks asset, its
  ``source_columns`` table names the source column, and the ``dagster/column_lineage`` entries
  the GraphQL API serves lead back hop by hop to that column.

Screenshots of the asset graph, the successful run, the partitions and the lineage are written to
``.local/e2e-screenshots/`` (``make screenshots`` writes them to ``docs/`` instead). When the UI
does not show what is expected, the test fails with the page's visible text and a screenshot
saved under pytest's tmp dir.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from bq_assets.local import stack

try:
    from playwright.sync_api import BrowserContext, Page, expect, sync_playwright
    from playwright.sync_api import Error as PlaywrightError
except ImportError:  # the dev extra is not installed; the browser fixture says so
    sync_playwright = None

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
# Where the screenshots go: ignored by git unless `make screenshots` points it at docs/.
SCREENSHOTS = Path(
    os.environ.get("BQ_ASSETS_E2E_SCREENSHOTS", REPO / ".local" / "e2e-screenshots")
).resolve()
CHROMIUM = Path(os.environ.get("BQ_ASSETS_E2E_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1400, "height": 900}
#: The global lineage (four export lanes and the sources beside them) fits in detail here.
GRAPH_VIEWPORT = {"width": 1600, "height": 1200}
#: An asset's upstream path (a source and four hops side by side) fits in detail here.
PATH_VIEWPORT = {"width": 1800, "height": 700}
SAMPLE_ROWS = "200"
LOCATION = "bq_assets"

EXPORTS = ("customer_360", "unified_transactions", "customer_segments")
STAGES = ("query", "gcs", "bigquery", "databricks")  # lineage order
RUN_EXPORT = "customer_360"
#: What each export reads: the external assets upstream of its query (issue 27).
SOURCES = {
    "customer_360": ["source/default/main/customer_360"],
    "unified_transactions": ["source/default/main/unified_transactions"],
    "customer_segments": [
        "source/default/main/customer_360",
        "source/default/main/unified_transactions",
    ],
}
LINEAGE_COLUMN = ("databricks/customer_360", "email")
PARTITIONED_EXPORT = "unified_transactions"  # partitioned by New York day
SCHEDULES = {  # name (without Dagster's ``_schedule`` suffix) → execution timezone
    "daily_america_los_angeles_refresh": "America/Los_Angeles",
    "daily_america_new_york_refresh": "America/New_York",
    "weekly_europe_london_refresh": "Europe/London",
}

SERVER_START_TIMEOUT_S = 120
RUN_TIMEOUT_S = 300  # about 1 min on an idle 2-CPU machine, minutes when it is busy
UI_TIMEOUT_MS = 20_000
PAGE_TEXT_CHARS = 3_000

ASSETS_QUERY = """
{
  assetNodes {
    assetKey { path }
    groupName
    dependencyKeys { path }
    assetChecksOrError { __typename ... on AssetChecks { checks { name } } }
  }
}
"""
#: The column lineage of assets as Dagster's UI reads it (its column graph asks the same API
#: for each asset's definition and latest materialization metadata).
COLUMN_LINEAGE_QUERY = """
query ($keys: [AssetKeyInput!]) {
  assetNodes(assetKeys: $keys, loadMaterializations: true) {
    assetKey { path }
    isMaterializable
    metadataEntries {
      label
      ... on TableColumnLineageMetadataEntry {
        lineage { columnName columnDeps { assetKey { path } columnName } }
      }
    }
    assetMaterializations(limit: 1) {
      metadataEntries {
        label
        ... on TableColumnLineageMetadataEntry {
          lineage { columnName columnDeps { assetKey { path } columnName } }
        }
      }
    }
  }
}
"""
WORKSPACE_QUERY = """
{
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name
        loadStatus
        locationOrLoadError { __typename ... on PythonError { message } }
      }
    }
    ... on PythonError { message }
  }
}
"""
LAUNCH_PARTITION_RUN = """
mutation ($location: String!, $keys: [AssetKeyInput!], $partition: String!) {
  launchRun(executionParams: {
    selector: {
      repositoryLocationName: $location, repositoryName: "__repository__",
      jobName: "__ASSET_JOB", assetSelection: $keys
    },
    executionMetadata: {tags: [{key: "dagster/partition", value: $partition}]}
  }) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on InvalidSubsetError { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}
"""
LAUNCH_BACKFILL = """
mutation ($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on InvalidSubsetError { message }
  }
}
"""
BACKFILL_QUERY = """
query ($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill { status numPartitions }
    ... on PythonError { message }
  }
}
"""
BACKFILL_RUNS_QUERY = """
query ($id: String!) {
  runsOrError(filter: {tags: [{key: "dagster/backfill", value: $id}]}) {
    ... on Runs { results { runId status tags { key value } } }
  }
}
"""
RUN_QUERY = """
query ($runId: ID!) {
  runOrError(runId: $runId) { __typename ... on Run { status } ... on PythonError { message } }
}
"""

#: Every asset node drawn in the lineage graph: its key (from the node's links into the catalog),
#: its SVG box, its visible name and text; and every drawn edge's start and end point.
GRAPH_DOM_JS = """() => {
  const nodes = [];
  for (const fo of document.querySelectorAll('svg foreignObject')) {
    const keys = new Set([...fo.querySelectorAll('a[href^="/assets/"]')].map(
      (a) => decodeURIComponent(new URL(a.href).pathname.slice('/assets/'.length))));
    if (keys.size !== 1) continue;
    const label = fo.querySelector('[data-tooltip]');
    nodes.push({
      key: [...keys][0],
      x: +fo.getAttribute('x'), y: +fo.getAttribute('y'),
      w: +fo.getAttribute('width'), h: +fo.getAttribute('height'),
      label: label ? label.textContent : '',
      text: fo.firstElementChild ? fo.firstElementChild.innerText : '',
    });
  }
  const edges = [];
  for (const path of document.querySelectorAll('svg path[marker-end]')) {
    const numbers = (path.getAttribute('d') || '').match(/-?[0-9.]+/g) || [];
    if (numbers.length >= 4) edges.push(numbers.slice(0, 2).concat(numbers.slice(-2)).map(Number));
  }
  return {nodes, edges};
}"""


def asset_key(stage: str, export: str) -> str:
    return f"{stage}/{export}"


def expected_edges(export: str) -> set[tuple[str, str]]:
    keys = [asset_key(stage, export) for stage in STAGES]
    return set(itertools.pairwise(keys))


# --- processes -----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _log_tail(path: Path, lines: int = 40) -> str:
    if not path.exists():
        return "(no log written)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _group_members(pgid: int) -> list[int]:
    """Processes still in the process group ``pgid`` (read from /proc)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def _stop_group(process: subprocess.Popen) -> None:
    """Stop ``dagster dev`` and everything it started (its own session and process group).

    ``dagster dev`` shuts its webserver, daemon and code servers down on SIGTERM; whatever is
    left in its process group afterwards (run workers, stragglers) is killed.
    """
    pgid = process.pid
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    for _ in range(50):
        members = _group_members(pgid)
        if not members:
            return
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            return
        time.sleep(0.2)


def graphql(url: str, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    """A query against the GraphQL endpoint the UI itself uses."""
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(
        f"{url}/graphql", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=15) as response:
        payload = json.loads(response.read())
    if payload.get("errors"):
        raise AssertionError(f"GraphQL errors: {payload['errors']}")
    return payload["data"]


def _wait_for_location(url: str, process: subprocess.Popen, log: Path) -> None:
    """Wait until the webserver answers and the code location has loaded."""
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    last = "no answer yet"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"dagster dev exited with {process.returncode}; {log}:\n{_log_tail(log)}")
        try:
            workspace = graphql(url, WORKSPACE_QUERY)["workspaceOrError"]
        except (urllib.error.URLError, OSError, AssertionError, ValueError) as exc:
            last = repr(exc)
        else:
            entries = {e["name"]: e for e in workspace.get("locationEntries", [])}
            entry = entries.get(LOCATION)
            if entry and entry["loadStatus"] == "LOADED":
                error = entry["locationOrLoadError"] or {}
                if error.get("__typename") == "PythonError":
                    pytest.fail(f"code location {LOCATION} failed to load: {error['message']}")
                return
            last = f"workspace: {workspace}"
        time.sleep(0.5)
    pytest.fail(
        f"dagster dev did not load {LOCATION} within {SERVER_START_TIMEOUT_S}s ({last}); "
        f"{log}:\n{_log_tail(log)}"
    )


@pytest.fixture(scope="module")
def dagster_ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``dagster dev`` on the local stack, both in temporary directories; yields its URL."""
    root = tmp_path_factory.mktemp("ui-e2e")
    stack_dir, home, log = root / "stack", root / "dagster_home", root / "dagster-dev.log"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {
        **os.environ,
        "BQ_ASSETS_ENV": "local",
        "BQ_ASSETS_LOCAL_DIR": str(stack_dir),
        "BQ_ASSETS_SAMPLE_ROWS": SAMPLE_ROWS,
        "BQ_ASSETS_SCHEDULES": "stopped",
        "DAGSTER_HOME": str(home),
    }
    env.pop("BQ_ASSETS_EXPORTS_DIR", None)
    dagster = str(Path(sys.executable).parent / "dagster")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    process: subprocess.Popen | None = None
    try:
        stack.up(stack_dir)
        with log.open("wb") as out:
            process = subprocess.Popen(
                [dagster, "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _wait_for_location(url, process, log)
        graphql(url, "mutation { setNuxSeen }")  # no "Join the Dagster community" dialog
        yield url
    finally:
        if process is not None:
            _stop_group(process)
        stack.down(stack_dir)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserContext]:
    """Headless Chromium with a fresh, empty profile."""
    if sync_playwright is None:
        pytest.fail("playwright is not installed: `pip install -e .[dev]` (or run `make e2e`)")
    if not CHROMIUM.exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: `apt-get install chromium` (or run `make e2e`)")
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            args=CHROMIUM_ARGS,
            headless=True,
            viewport=VIEWPORT,
        )
        try:
            yield context
        finally:
            context.close()


# --- the page, with failures that show what the page showed ----------------------------------


class UI:
    def __init__(self, page: Page, url: str, artifacts: Path) -> None:
        self.page = page
        self.url = url
        self.artifacts = artifacts
        self._failures = 0

    def goto(self, path: str) -> None:
        with self.step(f"open {path}"):
            self.page.goto(self.url + path)

    def fail(self, what: str, cause: BaseException | None = None) -> None:
        self._failures += 1
        shot = self.artifacts / f"failure-{self._failures}.png"
        try:
            self.page.screenshot(path=str(shot))
        except PlaywrightError as exc:
            shot = Path(f"(no screenshot: {exc})")
        try:
            text = self.page.inner_text("body", timeout=5_000)
        except PlaywrightError as exc:
            text = f"(no page text: {exc})"
        if len(text) > PAGE_TEXT_CHARS:
            text = text[:PAGE_TEXT_CHARS] + f"\n… ({len(text) - PAGE_TEXT_CHARS} more characters)"
        reason = f"\n{type(cause).__name__}: {cause}" if cause else ""
        message = (
            f"UI check failed: {what}{reason}\n"
            f"page: {self.page.url}\nscreenshot: {shot}\nvisible text:\n{text}"
        )
        raise pytest.fail.Exception(message, pytrace=False) from None

    @contextmanager
    def step(self, what: str) -> Iterator[None]:
        """Run one expectation; on failure, fail with the page's text and a screenshot."""
        failure = None
        try:
            yield
        except (AssertionError, PlaywrightError) as exc:
            failure = exc
        if failure is not None:  # outside the except block: no chained traceback
            self.fail(what, failure)

    def screenshot(self, name: str) -> None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        width = (self.page.viewport_size or VIEWPORT)["width"]
        self.page.mouse.move(width / 2, 5)  # no hover tooltips in the picture
        self.page.evaluate("document.activeElement && document.activeElement.blur()")
        self.page.wait_for_timeout(1_000)
        self.page.screenshot(path=str(SCREENSHOTS / name))


@pytest.fixture
def ui(browser: BrowserContext, dagster_ui: str, tmp_path: Path) -> Iterator[UI]:
    page = browser.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    expect.set_options(timeout=UI_TIMEOUT_MS)
    try:
        yield UI(page, dagster_ui, tmp_path)
    finally:
        page.close()


def asset_nodes(url: str) -> dict[str, dict[str, Any]]:
    """Asset key → GraphQL asset node."""
    return {"/".join(n["assetKey"]["path"]): n for n in graphql(url, ASSETS_QUERY)["assetNodes"]}


def check_names(node: dict[str, Any]) -> list[str]:
    checks = node["assetChecksOrError"]
    return [c["name"] for c in checks.get("checks", [])] if checks else []


def graph_dom(page: Page) -> tuple[dict[str, dict[str, Any]], set[tuple[str, str]]]:
    """The asset nodes drawn in the lineage graph, and the edges drawn between them."""
    dom = page.evaluate(GRAPH_DOM_JS)
    nodes = {node["key"]: node for node in dom["nodes"]}

    def node_at(x: float, y: float, side: str) -> str | None:
        for key, n in nodes.items():
            edge_x = n["x"] + n["w"] if side == "right" else n["x"]
            if abs(x - edge_x) <= 12 and n["y"] <= y <= n["y"] + n["h"]:
                return key
        return None

    edges = set()
    for x1, y1, x2, y2 in dom["edges"]:
        source, target = node_at(x1, y1, "right"), node_at(x2, y2, "left")
        if source and target:
            edges.add((source, target))
    return nodes, edges


def open_global_graph(ui: UI, expected_nodes: int) -> None:
    """The global asset lineage, every group expanded, zoomed until nodes show their details."""
    page = ui.page
    page.set_viewport_size(GRAPH_VIEWPORT)
    ui.goto("/asset-groups")
    with ui.step("the global asset lineage page loads"):
        expect(page.get_by_text("Global asset lineage")).to_be_visible()
        expect(page.get_by_role("button", name="Materialize all")).to_be_visible()
        for export in EXPORTS:
            expect(page.get_by_text(export, exact=True).first).to_be_visible()
    with ui.step("expand every group and zoom in to the detailed asset nodes"):
        hide_navigation = page.get_by_role("button", name="Hide navigation")
        if hide_navigation.is_visible():
            hide_navigation.click()
        page.locator("#zoom-slider-container").get_by_role("button", name="settings").click()
        toggle = page.get_by_role("menuitem", name=re.compile("(Expand|Collapse) all groups"))
        if "Expand" in toggle.inner_text():  # the profile remembers groups expanded earlier
            toggle.click()
        page.keyboard.press("Escape")
        page.get_by_placeholder(re.compile("^Jump to")).locator(
            "xpath=following::button[1]"
        ).click()
        zoom_in_to_details(page, expected_nodes)
    with ui.step("pan the graph to the middle of the canvas"):
        canvas = page.locator('[style*="cursor: grab"]').bounding_box()
        toolbar = page.get_by_role("button", name="Materialize all").bounding_box()
        boxes = [
            b for g in page.locator("svg foreignObject.group").all() if (b := g.bounding_box())
        ]
        assert canvas and toolbar and boxes, "no graph canvas or groups to center"
        top = toolbar["y"] + toolbar["height"] + 8
        dx = (
            canvas["x"]
            + canvas["width"] / 2
            - (min(b["x"] for b in boxes) + max(b["x"] + b["width"] for b in boxes)) / 2
        )
        dy = (top + canvas["y"] + canvas["height"]) / 2 - (
            min(b["y"] for b in boxes) + max(b["y"] + b["height"] for b in boxes)
        ) / 2
        start_x, start_y = canvas["x"] + canvas["width"] - 200, canvas["y"] + canvas["height"] - 30
        page.mouse.move(start_x, start_y)
        page.mouse.down()
        page.mouse.move(start_x + dx, start_y + dy, steps=10)
        page.mouse.up()


def zoom_in_to_details(page: Page, expected_nodes: int) -> None:
    """Zoom in until the graph draws its asset nodes in detail (with their links), the
    fewest steps that does (a wider graph needs more)."""
    details = (
        "n => document.querySelectorAll('svg foreignObject a[href^=\"/assets/\"]').length >= n"
    )
    for _ in range(3):
        page.locator("button:has([aria-label=zoom_in])").click()
        try:
            page.wait_for_function(details, arg=expected_nodes, timeout=3_000)
            return
        except PlaywrightError:
            continue
    page.wait_for_function(details, arg=expected_nodes)


# --- the tests -------------------------------------------------------------------------------


def test_asset_graph_shows_every_export_and_its_lineage(ui: UI) -> None:
    expected_keys = [asset_key(stage, export) for export in EXPORTS for stage in STAGES]
    open_global_graph(ui, len(expected_keys))

    with ui.step("the graph shows each export's four assets (query, gcs, bigquery, databricks)"):
        nodes, drawn_edges = graph_dom(ui.page)
        missing = [key for key in expected_keys if key not in nodes]
        assert not missing, f"asset nodes missing from the graph: {missing}; drawn: {sorted(nodes)}"
        for key in expected_keys:
            export = key.split("/")[-1]
            assert nodes[key]["label"] == export, f"node {key} is labelled {nodes[key]['label']!r}"
        for export in EXPORTS:  # the group boxes' titles
            expect(ui.page.get_by_text(export, exact=True).first).to_be_visible()

    with ui.step("the graph draws an arrow along each of the three hops of every export"):
        for export in EXPORTS:
            missing_edges = expected_edges(export) - drawn_edges
            assert not missing_edges, f"{export}: no arrow for {sorted(missing_edges)}"

    with ui.step("the GraphQL API behind the UI reports the same lineage and groups"):
        graph = asset_nodes(ui.url)
        for export in EXPORTS:
            first = (SOURCES[export], asset_key(STAGES[0], export))
            edges = [([upstream], downstream) for upstream, downstream in expected_edges(export)]
            for upstream, downstream in [first, *sorted(edges)]:
                node = graph.get(downstream)
                assert node, f"GraphQL has no asset {downstream}"
                deps = sorted("/".join(d["path"]) for d in node["dependencyKeys"])
                assert deps == upstream, f"{downstream} depends on {deps}"
                assert node["groupName"] == export, f"{downstream} is in {node['groupName']}"
        for source in {key for keys in SOURCES.values() for key in keys}:
            assert graph[source]["groupName"] == "sources", f"{source} is not in group sources"


def test_materialize_all_from_the_group_page_runs_and_passes_every_check(ui: UI) -> None:
    page = ui.page
    graph = asset_nodes(ui.url)
    keys = [asset_key(stage, RUN_EXPORT) for stage in STAGES]
    assert all(key in graph for key in keys), f"GraphQL lists only {sorted(graph)}"
    checks = {key: check_names(graph[key]) for key in keys}
    ui.goto(f"/locations/{LOCATION}/asset-groups/{RUN_EXPORT}/lineage")

    with ui.step(f"the {RUN_EXPORT} group's lineage shows its four assets"):
        page.wait_for_function(
            "n => document.querySelectorAll('svg foreignObject a[href^=\"/assets/\"]').length >= n",
            arg=len(keys),
        )
        nodes, _ = graph_dom(page)
        assert sorted(nodes) == sorted(keys), f"group lineage shows {sorted(nodes)}"

    with ui.step("'Materialize all' launches a run and its toast links to the run page"):
        page.get_by_role("button", name="Materialize all").click()
        view = page.locator('a[href^="/runs/"]', has_text="View")
        expect(view).to_be_visible()
        run_id = (view.get_attribute("href") or "").rsplit("/", 1)[-1]
        view.click()
        expect(page).to_have_url(re.compile(f"/runs/{run_id}"))

    deadline = time.monotonic() + RUN_TIMEOUT_S
    status = "UNKNOWN"
    while time.monotonic() < deadline:
        status = graphql(ui.url, RUN_QUERY, {"runId": run_id})["runOrError"].get("status")
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            break
        time.sleep(2)
    if status != "SUCCESS":
        ui.fail(f"run {run_id} ended {status} (waited up to {RUN_TIMEOUT_S}s for SUCCESS)")

    ui.goto(f"/runs/{run_id}")  # afresh: no launch toast over the screenshot
    with ui.step("the run page shows the run succeeded, with its assets and checks"):
        expect(page.get_by_text("Success", exact=True).first).to_be_visible()
        expect(page.get_by_text(f"{len(keys)} assets", exact=True)).to_be_visible()
        total = sum(len(names) for names in checks.values())
        expect(page.get_by_text(f"{total} checks", exact=True)).to_be_visible()

    with ui.step("the run's events show every check of the export succeeded"):
        page.get_by_placeholder(re.compile("^Filter")).fill("type:ASSET_CHECK_EVALUATION")
        page.keyboard.press("Enter")
        for key, names in checks.items():
            stage, export = key.split("/")
            for name in names:
                expect(
                    page.get_by_text(
                        f"Check {name} succeeded for materialization of {stage} / {export}"
                    )
                ).to_be_visible()
        expect(page.get_by_text(re.compile("Check .* failed for materialization"))).to_have_count(0)
    ui.screenshot("successful-run.png")

    for key, names in checks.items():
        ui.goto(f"/assets/{key}?view=checks")
        with ui.step(f"{key}'s Checks tab shows its {len(names)} checks succeeded"):
            expect(page.get_by_text(f"Checks ({len(names)})", exact=True)).to_be_visible()
            for name in names:
                row = page.locator('[class*="checkRow"]').filter(
                    has=page.get_by_text(name, exact=True)
                )
                expect(row.filter(has=page.get_by_text("Succeeded", exact=True))).to_be_visible()

    # External assets (the sources) have no checks, so no links into the catalog.
    open_global_graph(ui, len([key for key in graph if not key.startswith("source/")]))
    with ui.step(f"the global graph shows {RUN_EXPORT} materialized with its checks passed"):
        for key, names in checks.items():
            expect(
                page.locator("svg foreignObject").filter(
                    has=page.locator(f'a[href^="/assets/{key}?"]')
                )
            ).to_contain_text(re.compile(f"{len(names)} / {len(names)} Passed.*Materialized", re.S))
    ui.screenshot("asset-graph.png")


def test_the_bigquery_asset_shows_its_governed_columns_and_plots_its_cost(ui: UI) -> None:
    """After the run above: the BigQuery asset's column schema shows each column's description
    and classification (issue 25), and its numeric cost metadata is plotted over time."""
    page = ui.page
    key = asset_key("bigquery", RUN_EXPORT)
    ui.goto(f"/assets/{key}")
    with ui.step(f"{key}'s columns show their descriptions and classifications"):
        expect(page.get_by_text("The customer's preferred email address.").first).to_be_visible()
        expect(page.get_by_text("pii_email").first).to_be_visible()
        expect(
            page.get_by_text("Amperity ID of the unified customer profile").first
        ).to_be_visible()
    ui.screenshot("governed-columns.png")
    with ui.step(f"{key}'s metadata plots the BigQuery cost of each materialization"):
        page.get_by_role("button", name=re.compile("Plots$")).first.click()
        for name in ("bigquery_job_ms", "bigquery_bytes_processed", "bigquery_jobs"):
            expect(page.get_by_text(name, exact=True).first).to_be_visible()
    ui.screenshot("bigquery-cost-plot.png")


def wait_for_run(ui: UI, run_id: str) -> None:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    status = "UNKNOWN"
    while time.monotonic() < deadline:
        status = graphql(ui.url, RUN_QUERY, {"runId": run_id})["runOrError"].get("status")
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            break
        time.sleep(2)
    if status != "SUCCESS":
        ui.fail(f"run {run_id} ended {status} (waited up to {RUN_TIMEOUT_S}s for SUCCESS)")


def test_a_partitioned_asset_shows_its_partitions_and_the_one_materialized(ui: UI) -> None:
    """unified_transactions is partitioned by New York day: after a run of yesterday's
    partition, each of its assets' Partitions tab counts every partition and shows that one
    materialized, with the partition's own load metadata."""
    from bq_assets.exports import SHIPPED_EXPORTS_DIR, load_specs
    from bq_assets.stages.partitions import partitions_definition

    page = ui.page
    (spec,) = [s for s in load_specs(SHIPPED_EXPORTS_DIR) if s.name == PARTITIONED_EXPORT]
    definition = partitions_definition(spec)
    assert definition is not None
    keys = definition.get_partition_keys()
    day = keys[-1]
    launched = graphql(
        ui.url,
        LAUNCH_PARTITION_RUN,
        {
            "location": LOCATION,
            "keys": [{"path": [stage, PARTITIONED_EXPORT]} for stage in STAGES],
            "partition": day,
        },
    )["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    wait_for_run(ui, launched["run"]["runId"])

    asset = asset_key("bigquery", PARTITIONED_EXPORT)
    ui.goto(f"/assets/{asset}?view=partitions")
    with ui.step(f"{asset}'s Partitions tab counts {len(keys):,} daily partitions, 1 loaded"):
        expect(page.get_by_text(f"{len(keys):,} Partitions Selected").first).to_be_visible()
        expect(page.get_by_text("Materialized (1)", exact=True).first).to_be_visible()
        expect(page.get_by_text(f"Missing ({len(keys) - 1})", exact=True).first).to_be_visible()
        expect(page.get_by_text(day, exact=True).first).to_be_visible()
    ui.goto(f"/assets/{asset}?view=partitions&partition={day}")
    with ui.step(f"partition {day} shows its materialization and the partition's load"):
        expect(page.get_by_text("rows_by_partition").first).to_be_visible()
        expect(page.get_by_text("partition_overwrite").first).to_be_visible()
    ui.screenshot("asset-partitions.png")


def test_a_backfill_of_a_date_range_runs_its_partitions_in_one_run(ui: UI) -> None:
    """A backfill of two days of unified_transactions (from the UI's GraphQL API, as its
    backfill dialog launches it) runs under the backfill policy, 31 partitions per run: one run
    for the range, which succeeds; the backfill page shows it."""
    from bq_assets.exports import SHIPPED_EXPORTS_DIR, load_specs
    from bq_assets.stages.partitions import partitions_definition

    page = ui.page
    (spec,) = [s for s in load_specs(SHIPPED_EXPORTS_DIR) if s.name == PARTITIONED_EXPORT]
    definition = partitions_definition(spec)
    assert definition is not None
    days = definition.get_partition_keys()[-3:-1]
    launched = graphql(
        ui.url,
        LAUNCH_BACKFILL,
        {
            "params": {
                "assetSelection": [{"path": [stage, PARTITIONED_EXPORT]} for stage in STAGES],
                "partitionNames": days,
            }
        },
    )["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    backfill_id = launched["backfillId"]
    deadline = time.monotonic() + RUN_TIMEOUT_S
    backfill: dict[str, Any] = {}
    while time.monotonic() < deadline:
        backfill = graphql(ui.url, BACKFILL_QUERY, {"id": backfill_id})["partitionBackfillOrError"]
        if backfill.get("status") not in ("REQUESTED", None):
            break
        time.sleep(2)
    assert backfill.get("status") in ("COMPLETED", "COMPLETED_SUCCESS"), backfill
    assert backfill["numPartitions"] == 2
    runs = graphql(ui.url, BACKFILL_RUNS_QUERY, {"id": backfill_id})["runsOrError"]["results"]
    assert len(runs) == 1, f"the backfill policy should run both days in one run: {runs}"
    (run,) = runs
    assert run["status"] == "SUCCESS", run
    tags = {t["key"]: t["value"] for t in run["tags"]}
    assert (
        tags["dagster/asset_partition_range_start"],
        tags["dagster/asset_partition_range_end"],
    ) == (days[0], days[1])

    ui.goto(f"/runs/b/{backfill_id}")
    with ui.step(f"backfill {backfill_id}'s page shows its range, succeeded for all four assets"):
        expect(page.get_by_text(backfill_id).first).to_be_visible()
        expect(page.get_by_text(f"{days[0]}...{days[1]}", exact=True)).to_be_visible()
        expect(page.get_by_text("Succeeded", exact=True).first).to_be_visible()
        for stage in STAGES:
            expect(
                page.get_by_role("link", name=f"{stage} / {PARTITIONED_EXPORT}").first
            ).to_be_visible()
        expect(page.get_by_text("100% completed")).to_have_count(len(STAGES))


def test_automation_page_lists_the_schedules_with_their_timezones(ui: UI) -> None:
    page = ui.page
    for name, timezone in SCHEDULES.items():
        ui.goto("/automation")
        with ui.step(f"the Automation page lists the schedule {name}"):
            link = page.get_by_role("link").filter(
                has=page.get_by_text(re.compile(rf"^{name}(_schedule)?$"))
            )
            expect(link).to_be_visible()
            link.click()
        with ui.step(f"the schedule {name} runs in {timezone}"):
            expect(page.get_by_text("Execution timezone", exact=True)).to_be_visible()
            expect(page.locator("tr", has_text="Execution timezone")).to_contain_text(timezone)
            expect(page.locator("tr", has_text="Target")).to_contain_text(name)


def column_lineage_by_asset(url: str, keys: list[str]) -> dict[str, dict[str, Any]]:
    """Asset key → (is materializable, the ``dagster/column_lineage`` the UI would draw: the
    latest materialization's, else the definition's), read through GraphQL."""

    def lineage(entries: list[dict[str, Any]]) -> dict[str, list[tuple[str, str]]] | None:
        for entry in entries:
            if entry["label"] == "dagster/column_lineage":
                return {
                    item["columnName"]: [
                        ("/".join(d["assetKey"]["path"]), d["columnName"])
                        for d in item["columnDeps"]
                    ]
                    for item in entry["lineage"]
                }
        return None

    variables = {"keys": [{"path": key.split("/")} for key in keys]}
    found = {}
    for node in graphql(url, COLUMN_LINEAGE_QUERY, variables)["assetNodes"]:
        latest = node["assetMaterializations"][:1]
        recorded = lineage(latest[0]["metadataEntries"]) if latest else None
        found["/".join(node["assetKey"]["path"])] = {
            "materializable": node["isMaterializable"],
            "lineage": recorded or lineage(node["metadataEntries"]),
        }
    return found


def lineage_nodes(page: Page) -> list[dict[str, Any]]:
    """The asset nodes drawn in an asset's Lineage tab (boxes with a name, in layout
    coordinates), and which group box each sits in."""
    return page.evaluate(
        """() => {
      const boxes = [...document.querySelectorAll('svg foreignObject')].map((fo) => ({
        x: +fo.getAttribute('x'), y: +fo.getAttribute('y'),
        w: +fo.getAttribute('width'), h: +fo.getAttribute('height'),
        text: fo.firstElementChild ? fo.firstElementChild.innerText.trim() : '',
        links: [...fo.querySelectorAll('a[href^="/assets/"]')].map(
          (a) => decodeURIComponent(new URL(a.href).pathname.slice('/assets/'.length))),
        group: !!fo.querySelector('[class*="GroupNode"]'),
      }));
      const groups = boxes.filter((b) => b.group && b.text);
      return boxes.filter((b) => !b.group && b.text).map((b) => ({
        ...b,
        in_group: (groups.find((g) => g.x <= b.x && b.x + b.w <= g.x + g.w) || {}).text,
      }));
    }"""
    )


def test_a_databricks_column_s_lineage_leads_back_to_its_source_table(ui: UI) -> None:
    """``databricks/customer_360.email`` is the source's ``customer_360.email`` four hops
    earlier. The open source UI draws the assets' path (an asset's upstream Lineage tab) and
    shows each column's source columns (``source_columns``); the per-column graph of
    ``dagster/column_lineage`` is a Dagster+ feature ("Viewing column-level lineage in the UI
    is a Dagster+ feature", https://docs.dagster.io/guides/build/assets/metadata-and-tags/column-level-lineage),
    so its data is checked through the GraphQL API that graph reads."""
    page = ui.page
    asset, column = LINEAGE_COLUMN
    export = asset.split("/")[-1]
    source = SOURCES[export][0]
    path = [source, *(asset_key(stage, export) for stage in STAGES)]

    with ui.step("GraphQL: each hop's dagster/column_lineage leads email back to the source"):
        lineage = column_lineage_by_asset(ui.url, path)
        assert lineage[source] == {"materializable": False, "lineage": None}
        walked, at = [(asset, column)], (asset, column)
        while lineage.get(at[0], {}).get("lineage"):
            (at,) = lineage[at[0]]["lineage"][at[1]]
            walked.append(at)
        assert walked == [(key, column) for key in reversed(path)], walked

    page.set_viewport_size(PATH_VIEWPORT)
    ui.goto(f"/assets/{asset}?view=lineage&lineageScope=upstream&lineageDepth={len(STAGES)}")
    with ui.step(f"{asset}'s upstream lineage draws the source table, then the four hops"):
        hide_navigation = page.get_by_role("button", name="Hide navigation")
        if hide_navigation.is_visible():
            hide_navigation.click()
        zoom_in_to_details(page, len(STAGES))
        nodes = sorted(lineage_nodes(page), key=lambda n: n["x"])
        assert [n["text"].splitlines()[0] for n in nodes] == [export] * len(path), nodes
        assert [n["in_group"] for n in nodes] == ["sources"] + [export] * len(STAGES), nodes
        keyed = [sorted({k.split("?")[0] for k in n["links"]}) for n in nodes[1:]]
        assert keyed == [[key] for key in path[1:]], keyed
        _, drawn = graph_dom(page)
        assert set(itertools.pairwise(path[1:])) <= drawn, drawn
        ends = [
            (x1, x2)
            for x1, _, x2, _ in page.evaluate(GRAPH_DOM_JS)["edges"]
            if abs(x1 - (nodes[0]["x"] + nodes[0]["w"])) <= 12 and abs(x2 - nodes[1]["x"]) <= 12
        ]
        assert ends, "no arrow from the source table to the query"
    with ui.step("pan the path to the middle of the canvas"):
        center_graph(page)
    ui.screenshot("source-lineage.png")

    page.set_viewport_size(VIEWPORT)
    ui.goto(f"/assets/{asset}")
    with ui.step(f"{asset}'s source_columns names {column}'s source column"):
        row = page.locator("tr", has_text="source_columns")
        expect(row).to_be_visible()
        show = row.get_by_text("[Show Markdown]")
        if show.count():  # long tables open in a dialog
            show.click()
            table = page.get_by_role("dialog")
        else:
            table = row
        expect(table).to_contain_text(" → ".join(path[1:]))
        email_row = table.locator("tr").filter(
            has=page.get_by_role("cell", name=column, exact=True)
        )
        expect(email_row).to_contain_text(f"{source} · {column}")
    ui.screenshot("column-lineage.png")


def center_graph(page: Page) -> None:
    """Drag the graph so that its group boxes sit in the middle of the visible canvas."""
    canvas = page.locator('[style*="cursor: grab"]').bounding_box()
    boxes = [b for g in page.locator("svg foreignObject.group").all() if (b := g.bounding_box())]
    if not boxes:
        boxes = [
            b
            for g in page.locator("svg foreignObject").all()
            if (b := g.bounding_box()) and b["height"] > 100
        ]
    assert canvas and boxes, "no graph canvas or groups to center"
    dx = (
        canvas["x"]
        + canvas["width"] / 2
        - (min(b["x"] for b in boxes) + max(b["x"] + b["width"] for b in boxes)) / 2
    )
    dy = (
        canvas["y"]
        + canvas["height"] / 2
        - (min(b["y"] for b in boxes) + max(b["y"] + b["height"] for b in boxes)) / 2
    )
    start_x, start_y = canvas["x"] + canvas["width"] - 200, canvas["y"] + canvas["height"] - 30
    page.mouse.move(start_x, start_y)
    page.mouse.down()
    page.mouse.move(start_x + dx, start_y + dy, steps=10)
    page.mouse.up()
