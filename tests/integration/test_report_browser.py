"""The report and the MLflow UI, checked in a real browser (headless Chromium; see browser.py).

Screenshots are saved under each test's tmp dir (pytest keeps the last three runs under
/tmp/pytest-of-<user>/) and their paths printed (``pytest -s`` shows them); with MEDKD_SCREENSHOTS=<dir>
they are copied there too.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from browser import chromium, click_text, require_browser, wait_for
from wfhelpers import VENV_BIN

pytestmark = [pytest.mark.slow, pytest.mark.browser]


def _keep(shot: Path, what: str) -> None:
    print(f"\n{what}: {shot}")
    if os.environ.get("MEDKD_SCREENSHOTS"):
        dest = Path(os.environ["MEDKD_SCREENSHOTS"])
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, dest / shot.name)


@pytest.fixture(autouse=True)
def _browser_available():
    require_browser()  # skip before building anything when there is no browser


def _body_text(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.TAG_NAME, "body").text


def _show(driver, category: str, subcategory: str | None) -> None:
    """Navigate as a user: back to the menu, the category's entry, then its subcategory (if it has several)."""
    driver.execute_script("app.setView({navbarMode: 'menu'});")  # the home button of the breadcrumbs
    click_text(driver, category)
    if subcategory:
        click_text(driver, subcategory)


def _open_result(driver, category: str, subcategory: str | None, label: str) -> None:
    """Open the labelled result of a category (its eye button), as a user does."""
    from selenium.webdriver.common.by import By

    _show(driver, category, subcategory)
    row = wait_for(lambda: next((r for r in driver.find_elements(
        By.XPATH, f"//tr[td[normalize-space(text())='{label}']]") if r.is_displayed()), None),
        what=f"row {label!r} of {category}/{subcategory}")
    row.find_element(By.CSS_SELECTOR, "a[iconname='eye']").click()


def _in_iframe(driver, check, what: str):
    """Run ``check()`` inside the content iframe (HTML results are shown in one), then return to the page."""
    from selenium.webdriver.common.by import By

    frame = wait_for(lambda: next((f for f in driver.find_elements(By.TAG_NAME, "iframe") if f.is_displayed()), None),
                     what=f"the iframe of {what}")
    driver.switch_to.frame(frame)
    try:
        return wait_for(check, what=what)
    finally:
        driver.switch_to.default_content()


def _table_rows(driver, table_id: str) -> list[list[str]]:
    from selenium.webdriver.common.by import By

    table = driver.find_element(By.ID, table_id)
    return [[c.text for c in tr.find_elements(By.XPATH, "./th|./td")] for tr in table.find_elements(By.TAG_NAME, "tr")]


def test_report_in_browser(tiny_report, tiny_workflow, tmp_path):
    from selenium.webdriver.common.by import By

    wd = tiny_workflow
    cfg = yaml.safe_load((wd / "tiny.yaml").read_text())
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=wd, capture_output=True, text=True, check=True).stdout.strip()
    md5 = json.loads((wd / "results/slices/embedded.json").read_text())["md5"]
    with chromium() as driver:
        driver.get(tiny_report.as_uri())
        wait_for(lambda: driver.find_elements(By.ID, "medkd-overview"), what="the landing page (overview)")
        landing = driver.find_element(By.ID, "medkd-overview").text
        for text in ("What ran", "tiny.yaml", head, md5, "run time", "training", "Experiments", "Paper numbers",
                     "Health", "All models healthy" if "flag" not in landing else "flag"):
            assert text in landing, (text, landing[:3000])
        for exp in cfg["experiments"]:
            assert driver.find_elements(By.XPATH, f"//table[@id='experiments']//a[normalize-space(.)='{exp}']"), exp
        shot = tmp_path / "report_landing.png"
        driver.save_screenshot(str(shot))
        _keep(shot, "report landing page")

        menu = _body_text(driver)
        assert "Overview" in menu
        for exp, ecfg in cfg["experiments"].items():
            assert exp in menu
            models = list(ecfg["models"])
            # experiment table and paper layout, as HTML tables
            _open_result(driver, exp, "Tables", "experiment table")
            rows = _in_iframe(driver, lambda: _table_rows(driver, "experiment-table"), f"{exp} experiment table")
            assert [r[0] for r in rows[1:]] == models and any("dice" in c for c in rows[0])
            verdicts = _in_iframe(driver, lambda: _table_rows(driver, "paper-verdicts"), f"{exp} paper numbers")
            assert "verdict" in verdicts[0]
            assert all(r[verdicts[0].index("verdict")] for r in verdicts[1:])
            _open_result(driver, exp, "Tables", "paper layout and verdicts")
            rows = _in_iframe(driver, lambda: _table_rows(driver, "paper-table"), f"{exp} paper table")
            assert len(rows) == 1 + len(models)
            # figures: the main metric per case and seed, curves, panels
            for label in ("main metric per case and seed", "validation curves", "qualitative panels"):
                _open_result(driver, exp, "Figures", label)
                img = wait_for(lambda: next((i for i in driver.find_elements(By.TAG_NAME, "img")
                                             if i.get_attribute("src").startswith("data:image/png")
                                             and driver.execute_script("return arguments[0].naturalWidth", i) > 0),
                                            None), what=f"{exp} {label} image")
                if label == "qualitative panels":
                    width = driver.execute_script("return arguments[0].naturalWidth", img)
                    assert width > 400, width
                    shot = tmp_path / f"report_{exp}_panels.png"
                    driver.save_screenshot(str(shot))
                    _keep(shot, f"report panels of {exp}")
            # one card per model, navigable by model
            _show(driver, exp, "Models")
            for m in models:
                assert wait_for(lambda m=m: driver.find_elements(By.XPATH, f"//tr/td[starts-with(normalize-space(.), '{m}:')]"),
                                what=f"model row {m}")
            kd = next(m for m, c in ecfg["models"].items() if c.get("kd_method"))
            label = driver.find_element(By.XPATH, f"//tr/td[starts-with(normalize-space(.), '{kd}:')]").text
            _open_result(driver, exp, "Models", label)
            info = _in_iframe(driver, lambda: _table_rows(driver, "model-info"), f"model card {kd}")
            assert ["KD method", ecfg["models"][kd]["kd_method"]] in info
        _open_result(driver, "Overview", None, "paper numbers and verdicts")
        numbers = _in_iframe(driver, lambda: _table_rows(driver, "paper-numbers"), "paper numbers")
        col = numbers[0].index("verdict")
        kinds = {r[col].split(" (")[0] for r in numbers[1:]}
        assert {"not run here", "no code path"} <= kinds and all(r[col] for r in numbers[1:]), kinds


# ------------------------------------------------------------------------------------------ MLflow UI


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_ui(tiny_workflow, tmp_path):
    """`mlflow ui` on 127.0.0.1 with the tiny run's store, one worker, no job runner; stopped (its whole
    process group) after the test."""
    port = _free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
           "DO_NOT_TRACK": "true"}
    log = open(tmp_path / "mlflow-ui.log", "w")
    proc = subprocess.Popen([str(VENV_BIN / "mlflow"), "ui", "--backend-store-uri",
                             f"sqlite:///{tiny_workflow / 'results' / 'mlflow.db'}", "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"],
                            cwd=tiny_workflow, env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        def up():
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow ui exited: {(tmp_path / 'mlflow-ui.log').read_text()[-2000:]}")
            try:
                return urllib.request.urlopen(f"{url}/health", timeout=2).status == 200
            except OSError:
                return False

        deadline = time.monotonic() + 240
        while not up():
            assert time.monotonic() < deadline, (tmp_path / "mlflow-ui.log").read_text()[-3000:]
            time.sleep(1)
        yield url
    finally:
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        try:  # the group's other processes (uvicorn worker) must be gone too
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        log.close()


def test_mlflow_ui_lists_parent_and_child_runs(mlflow_ui, tiny_workflow, tmp_path):
    from mlflow.tracking import MlflowClient
    from selenium.webdriver.common.by import By

    runs = json.loads((tiny_workflow / "results/mlflow/runs/tiny.json").read_text())
    client = MlflowClient(f"sqlite:///{tiny_workflow / 'results' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("medkd-test/tiny")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    parents = sorted(k for k in runs if k.count("/") == 1)
    children = sorted(k for k in runs if k.count("/") == 2)
    assert parents == ["tiny/student", "tiny/student_kd", "tiny/teacher"] and len(children) == 3
    with chromium() as driver:
        # the experiment page as `make ui` prints it: the runs view of a model-training experiment
        driver.get(f"{mlflow_ui}/#/experiments/{exp.experiment_id}?workflowType=machine_learning")
        for p in parents:
            wait_for(lambda p=p: driver.find_elements(By.XPATH, f"//a[normalize-space(.)='{p}']"), 120,
                     what=f"parent run {p} on the runs page")
        assert "/runs" in driver.current_url, driver.current_url
        for p in parents:  # expand each parent: its seed runs are nested under it
            link = driver.find_element(By.XPATH, f"//a[normalize-space(.)='{p}']")
            cell = link.find_element(By.XPATH, "./ancestor::*[@role='gridcell'][1]")
            cell.find_element(By.CSS_SELECTOR, "button[data-component-id*='runnamecellrenderer']").click()
        for c in children:
            wait_for(lambda c=c: driver.find_elements(By.XPATH, f"//a[normalize-space(.)='{c}']"), 60,
                     what=f"child run {c} under its parent")
        text = _body_text(driver)
        assert "6 matching runs" in text and "embedded" in text, text[:2000]
        shot = tmp_path / "mlflow_runs.png"
        driver.save_screenshot(str(shot))
        _keep(shot, "MLflow runs page")
