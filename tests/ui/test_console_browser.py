"""The web console in a real browser (Debian Chromium via Selenium): sign in, open every page, compare two
runs, promote a model, and check that a viewer sees no write controls. A PNG of every page is saved under
the test's output folder (``<tmp_path>/screenshots``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from facefleet.platform.models import service as registry
from facefleet.platform.runs import lifecycle
from tests.ui.conftest import Console

WAIT_SECONDS = 20


def _wait(driver: Any, condition: Any) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_SECONDS).until(condition)


def _charts_drawn(driver: Any) -> None:
    """Every chart on the page finished drawing (an SVG or its 'nothing yet' text), none failed."""
    _wait(
        driver,
        lambda d: all(
            chart.get_attribute("data-drawn") for chart in d.find_elements("css selector", "[data-chart]")
        ),
    )
    for chart in driver.find_elements("css selector", "[data-chart]"):
        assert chart.get_attribute("data-drawn") == "1", chart.text


def _shot(driver: Any, folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    driver.set_window_size(1400, 800)
    height = driver.execute_script("return Math.min(document.documentElement.scrollHeight, 4000)")
    chrome = driver.execute_script("return window.outerHeight - window.innerHeight")
    driver.set_window_size(1400, int(height) + int(chrome) + 8)
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 5000
    return path


def _sign_in(driver: Any, console: Console, key: str) -> None:
    from selenium.webdriver.support import expected_conditions as ec

    driver.get(f"{console.url}/")
    _wait(driver, ec.url_contains("/ui/login"))
    driver.find_element("id", "api-key").send_keys(key)
    driver.find_element("id", "sign-in").click()
    _wait(driver, ec.presence_of_element_located(("id", "sign-out")))


def _open(driver: Any, console: Console, path: str) -> None:
    from selenium.webdriver.support import expected_conditions as ec

    driver.get(console.url + path)
    # Every console page has the sign-out form; an error page does not.
    _wait(driver, ec.presence_of_element_located(("id", "sign-out")))
    assert "Not found" not in driver.title and "Not allowed" not in driver.title, path


def test_console_in_chromium(console: Console, browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.support import expected_conditions as ec

    driver = browser
    shots = tmp_path / "screenshots"
    seeded = console.seeded

    # Sign in; the login page itself.
    driver.get(f"{console.url}/ui/login")
    _shot(driver, shots, "00-login")
    _sign_in(driver, console, seeded.admin_key)
    assert "/ui/runs" in driver.current_url

    # Every page, with its charts drawn by the page's own script from the REST API.
    pages = [
        ("01-datasets", "/ui/datasets"),
        ("02-dataset", "/ui/datasets/faces-a"),
        ("03-runs", "/ui/runs"),
        ("04-run", f"/ui/runs/{seeded.run_ids[0]}"),
        ("05-run-live", f"/ui/runs/{seeded.running_run_id}"),
        ("06-models", "/ui/models"),
        ("07-model", "/ui/models/facefleet"),
        ("08-devices", "/ui/devices"),
        ("09-deployments", "/ui/deployments"),
        ("10-deployment", f"/ui/deployments/{seeded.deployment_id}"),
        ("11-policies", "/ui/policies"),
        ("12-audit", "/ui/audit"),
    ]
    for name, path in pages:
        _open(driver, console, path)
        _charts_drawn(driver)
        _shot(driver, shots, name)

    # The finished run: loss curves and ROC are SVG paths; the thumbnails loaded.
    _open(driver, console, f"/ui/runs/{seeded.run_ids[0]}")
    _charts_drawn(driver)
    loss_paths = driver.find_elements("css selector", "[data-chart=loss] path[data-series]")
    assert {p.get_attribute("data-series") for p in loss_paths} >= {"loss", "identity_loss", "kl_loss"}
    roc_paths = driver.find_elements("css selector", "[data-chart=roc] path[data-series]")
    assert roc_paths and "faces-verify cosine" in roc_paths[0].get_attribute("data-series")
    _wait(driver, lambda d: "step 200" in d.find_element("css selector", "pre.logs").text)
    _open(driver, console, "/ui/datasets/faces-a")
    images = driver.find_elements("css selector", "#samples img")
    assert len(images) == 6  # one per identity
    assert all(driver.execute_script("return arguments[0].naturalWidth", img) > 0 for img in images)

    # Live progress: the running run's page follows the API without a reload.
    _open(driver, console, f"/ui/runs/{seeded.running_run_id}")
    with Session(console.engine) as session:
        lifecycle.report_progress(session, seeded.running_run_id, step=150, total_steps=200, eta_seconds=12)
        session.commit()
    _wait(driver, lambda d: d.find_element("css selector", "[data-field=steps]").text.startswith("150 / 200"))
    bar = driver.find_element("css selector", "progress[data-field=progress]")
    assert bar.get_attribute("value") == "0.75"

    # Compare two runs from the runs list: tick two boxes, press Compare.
    _open(driver, console, "/ui/runs")
    button = driver.find_element("id", "compare-button")
    assert not button.is_enabled()
    for run_id in seeded.run_ids[:2]:
        driver.find_element("css selector", f"input.pick[value='{run_id}']").click()
    assert button.is_enabled()
    button.click()
    _wait(driver, ec.url_contains("/ui/compare"))
    _charts_drawn(driver)
    table = driver.find_element("id", "compare").text
    assert f"run {seeded.run_ids[0]}" in table and f"run {seeded.run_ids[1]}" in table
    assert "eval/faces-verify/cosine/accuracy" in table
    overlaid = driver.find_elements("css selector", "[data-chart=loss] path[data-series]")
    assert len(overlaid) == 2
    assert len(driver.find_elements("css selector", "[data-chart=roc] path[data-series]")) == 2
    _shot(driver, shots, "13-compare")

    # Promote v2 to production (the form asks for confirmation first).
    _open(driver, console, "/ui/models/facefleet")
    driver.find_element("id", "promote-2").click()
    _wait(driver, ec.alert_is_present()).accept()
    _wait(driver, ec.presence_of_element_located(("css selector", ".banner.notice")))
    assert "facefleet v2 is now production" in driver.find_element("css selector", ".banner.notice").text
    with Session(console.engine) as session:
        assert registry.get_model_version(session, "facefleet", "production").version == 2
    _shot(driver, shots, "14-promoted")

    # Sign out, sign in as a viewer: the same pages, no write controls.
    driver.find_element("id", "sign-out").click()
    _wait(driver, ec.url_contains("/ui/login"))
    _sign_in(driver, console, seeded.viewer_key)
    for _name, path in pages:
        _open(driver, console, path)
        writes = driver.find_elements("css selector", "button.write, form[action$='/promote'], #cancel-run")
        assert writes == [], (path, [w.text for w in writes])
    _open(driver, console, f"/ui/runs/{seeded.running_run_id}")
    _shot(driver, shots, "15-viewer-run")
    _open(driver, console, "/ui/models/facefleet")
    _shot(driver, shots, "16-viewer-model")
    assert len(list(shots.glob("*.png"))) == 17
