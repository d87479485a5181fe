"""The MLflow UI shows a search: a real `mlflow server`, a tiny real search against it, headless Chromium."""
from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import run_cli

pytestmark = [pytest.mark.integration, pytest.mark.browser]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
CHROMEDRIVER = shutil.which("chromedriver")
NUM_SAMPLES = 3


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path: Path):
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--default-artifact-root", str(tmp_path / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while True:
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=2)
            break
        except OSError:
            if time.time() > deadline or server.poll() is not None:
                server.kill()
                pytest.fail("mlflow server did not start")
            time.sleep(0.5)
    yield uri
    server.terminate()
    server.wait(timeout=30)


def _trial_names_on_experiment_page(url: str, screenshot: Path) -> set[str]:
    """Open the experiment's runs page in headless Chromium, expand the search's parent run and
    return the trial run names the table shows."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,900", f"--user-data-dir={tempfile.mkdtemp()}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get(url)
        wait = WebDriverWait(driver, 60)
        expand = wait.until(expected_conditions.element_to_be_clickable(
            (By.CSS_SELECTOR, "[role=row] button[data-component-id*='runnamecellrenderer']")))
        expand.click()  # the parent row of the search; its children are the trials
        wait.until(lambda d: d.find_elements(By.XPATH, "//a/span[starts-with(text(), 'trial-')]"))
        driver.save_screenshot(str(screenshot))
        return {element.text for element in driver.find_elements(By.XPATH, "//a/span[starts-with(text(), 'trial-')]")}
    finally:
        driver.quit()


@pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                    reason="needs Chromium and ChromeDriver (apt-get install chromium chromium-driver); .ci/run installs them")
def test_experiment_page_lists_the_trials(mlflow_server, tiny_space, tmp_path):
    completed = run_cli("automl_factor.search", "--space", str(tiny_space), "--num-samples", str(NUM_SAMPLES),
                        "--max-epochs", "1", "--scheduler", "fifo", "--mlflow-uri", mlflow_server,
                        "--experiment", "browser-check", "--name", "ui", cwd=tmp_path)
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-2000:]
    assert f"Browse it:  {mlflow_server}" in completed.stdout

    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("browser-check")
    runs = client.search_runs([experiment.experiment_id])
    trial_names = sorted(run.info.run_name for run in runs if run.info.run_name.startswith("trial-"))
    assert len(trial_names) == NUM_SAMPLES

    # The MLflow 3 UI opens experiments on a GenAI overview; the runs page is the training-runs table,
    # where the search's parent run nests its trials.
    shown = _trial_names_on_experiment_page(f"{mlflow_server}/#/experiments/{experiment.experiment_id}/runs",
                                            tmp_path / "experiment_page.png")
    assert shown == set(trial_names)
