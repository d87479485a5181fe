"""What a person sees after a search, in a real browser: a real `mlflow server`, a tiny real search
against it (MO-ASHA stops some trials), headless Chromium on the interactive front (front.html),
on the MLflow runs table the search links to (filtered to the front), and on optuna-dashboard's
study page.

``AUTOML_FACTOR_SCREENSHOT=docs/front.png`` saves the front's screenshot there (the README's).
"""
from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import optuna
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from conftest import TINY_SPACE, free_port, mlflow_server_command, run_cli, serve, stop

pytestmark = [pytest.mark.integration, pytest.mark.browser]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
CHROMEDRIVER = shutil.which("chromedriver")
DASHBOARD = Path(sys.executable).with_name("optuna-dashboard")
NUM_SAMPLES = 5
# A run name that says the model: kinds, recipe, params, accuracy (or failed), the trial id last.
MODEL_NAME = re.compile(r"^(★ )?[a-z+]+(·[A-Z~+/]+)?·p0\.\d{3}·(acc\d\.\d{3}|failed)(·stopped@\d/\d)?"
                        r"·(?P<trial>\w+)$")

needs_chromium = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Chromium and ChromeDriver (apt-get install chromium chromium-driver); .ci/run installs them")


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = serve(mlflow_server_command(folder, port), f"{uri}/health", "mlflow server")
    yield uri
    stop(server)


@pytest.fixture(scope="module")
def search(mlflow_server, tmp_path_factory):
    """A finished search: (its folder, the command's stdout, the trial table)."""
    folder = tmp_path_factory.mktemp("search")
    # The tiny space on more of digits' images, so two epochs already learn something to look at.
    (folder / "tiny.yaml").write_text(TINY_SPACE.replace("train_subset: 400", "train_subset: 1100"))
    completed = run_cli("automl_factor.search", "--space", "tiny.yaml", "--num-samples", str(NUM_SAMPLES),
                        "--max-epochs", "2", "--grace-period", "1", "--reduction-factor", "2", "--seed", "3",
                        "--mlflow-uri", mlflow_server, "--experiment", "browser-check", "--name", "ui", cwd=folder)
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-2000:]
    rows = pq.read_table(folder / "automl_runs" / "ui" / "trials.parquet").to_pylist()
    return folder, completed.stdout, rows


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,1000", f"--user-data-dir={tempfile.mkdtemp()}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def _wait(driver, condition, seconds: float = 60):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait
    # Pages re-render as their data arrives: an element found a moment ago may be gone.
    return WebDriverWait(driver, seconds, ignored_exceptions=(StaleElementReferenceException,)).until(condition)


def _children(mlflow_server: str) -> tuple[object, list]:
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("browser-check")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    return experiment, [run for run in runs if "mlflow.parentRunId" in run.data.tags]


def test_mlflow_runs_say_the_model_and_early_stops_are_not_killed(search, mlflow_server):
    _, stdout, rows = search
    experiment, children = _children(mlflow_server)
    assert experiment.tags.get("mlflow.experimentKind") == "custom_model_development"  # opens on the runs table
    assert len(children) == NUM_SAMPLES
    stopped = [run for run in children if run.data.tags["status"] == "pruned"]
    assert stopped, "MO-ASHA with reduction factor 2 should stop some trials"
    for run in children:
        assert run.info.status != "KILLED"
        assert run.data.tags["early_stopped"] == str(run in stopped).lower()
        match = MODEL_NAME.match(run.info.run_name)
        assert match and match["trial"] == run.data.tags["automl_factor.trial_id"], run.info.run_name
        assert run.info.run_name.startswith("★") == (run.data.tags["pareto"] == "true")
    assert all(run.info.status == "FINISHED" and "·stopped@1/2·" in run.info.run_name for run in stopped)

    # Progress lines name the trial and its objectives.
    for row in rows:
        assert re.search(rf"trial {row['trial_id']} (complete|stopped early at epoch 1/2|failed): acc \d\.\d{{4}} "
                         rf"params \d\.\d{{4}} latency \d+\.\d\d×", stdout), stdout[-3000:]

    parent = MlflowClient(mlflow_server).get_run(children[0].data.tags["mlflow.parentRunId"])
    description = parent.data.tags["mlflow.note.content"]
    front = [row for row in rows if row["pareto"]]
    assert front and all(f"| {row['trial_id']} |" in description for row in front)
    assert "-m automl_factor.export --name ui --trial" in description
    assert {"front.html", "accuracy_vs_params.png"} <= {item.path for item in
                                                         MlflowClient(mlflow_server).list_artifacts(parent.info.run_id)}


def test_optuna_study_has_metric_names_and_links_to_mlflow(search, mlflow_server):
    folder, stdout, rows = search
    database = folder / "automl_runs" / "ui" / "optuna.db"
    assert f"optuna-dashboard sqlite:///{database}" in stdout
    study = optuna.load_study(study_name="ui", storage=f"sqlite:///{database}")
    assert study.metric_names == ["accuracy", "params_ratio", "latency_ratio"]
    _, children = _children(mlflow_server)
    runs = {run.data.tags["automl_factor.trial_id"]: run.info.run_id for run in children}
    by_ray_id = {trial.user_attrs.get("ray_trial_id"): trial for trial in study.trials}
    for row in rows:
        trial = by_ray_id[row["trial_id"]]
        assert trial.user_attrs["mlflow_run_id"] == runs[row["trial_id"]]
        assert " · " in trial.user_attrs["plan"]
        assert len(trial.user_attrs["accuracy_by_epoch"]) == row["epochs_trained"]


@needs_chromium
def test_html_front_labels_the_front(search, browser):
    from selenium.webdriver.common.by import By

    folder, stdout, rows = search
    page = folder / "automl_runs" / "ui" / "front.html"
    assert f"The front, interactive:  {page}" in stdout
    browser.get(page.as_uri())
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#front .textpoint text"))
    labels = {element.text for element in browser.find_elements(By.CSS_SELECTOR, "#front .textpoint text")}
    front = {row["trial_id"] for row in rows if row["pareto"]}
    assert front and front <= labels  # every front model labeled (in each projection)
    legend = " ".join(element.text for element in browser.find_elements(By.CSS_SELECTOR, "#front .legendtext"))
    assert "front (" in legend and "stopped early (" in legend
    texts = browser.find_element(By.TAG_NAME, "body").text
    assert "front is 3-D" in texts and "hypervolume" in texts and "dense" in texts
    table = browser.find_element(By.ID, "front-table").text
    assert all(f"--trial {trial_id}" in table for trial_id in front)  # the export commands, to copy
    screenshot = os.environ.get("AUTOML_FACTOR_SCREENSHOT")
    if screenshot:
        browser.execute_script("window.scrollTo(0, 0)")
        Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(Path(screenshot).resolve()))


@needs_chromium
def test_runs_table_link_shows_the_front(search, mlflow_server, browser):
    from selenium.webdriver.common.by import By

    _, stdout, rows = search
    link = re.search(r"Browse it:  (\S+)", stdout)[1]
    assert link.startswith(f"{mlflow_server}/#/experiments/") and "searchFilter=" in link
    _, children = _children(mlflow_server)
    front_names = {run.info.run_name for run in children if run.data.tags["pareto"] == "true"}
    browser.get(link)
    shown = "//a/span[starts-with(text(), '★')]"
    _wait(browser, lambda d: len(d.find_elements(By.XPATH, shown)) >= len(front_names))
    names = {element.text for element in browser.find_elements(By.XPATH, shown)}
    assert names == front_names
    others = {run.info.run_name for run in children} - front_names
    page = browser.find_element(By.TAG_NAME, "body").text
    assert not any(name in page for name in others)  # the filter left only the front


@needs_chromium
@pytest.mark.skipif(not DASHBOARD.exists(), reason="needs optuna-dashboard (pip install -e '.[dashboard]')")
def test_optuna_dashboard_shows_the_named_pareto_front(search, browser):
    from selenium.webdriver.common.by import By

    folder, _, _ = search
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    dashboard = serve([str(DASHBOARD), f"sqlite:///{folder / 'automl_runs' / 'ui' / 'optuna.db'}",
                        "--host", "127.0.0.1", "--port", str(port)], f"{url}/api/studies", "optuna-dashboard")
    try:
        browser.get(f"{url}/dashboard/studies/1")
        # The Pareto front card picks its two axes among the objectives, by name.
        named = re.compile(r"Pareto Front\s+Objective X:\s+accuracy\s+Objective Y:\s+params_ratio")
        _wait(browser, lambda d: named.search(d.find_element(By.TAG_NAME, "body").text))
        _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".js-plotly-plot .scatterlayer .point"))
        browser.save_screenshot(str(folder / "dashboard.png"))
        assert "Objective 0" not in browser.find_element(By.TAG_NAME, "body").text
    finally:
        stop(dashboard)
