"""The README's deployment sections: complete, honest about the original spec's variables, and pointing only at
files that exist."""

from __future__ import annotations

import re

from deploy.deploy_files import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()


def section(title: str) -> str:
    """The text under ``title`` (a ## or ### heading) up to the next heading of the same or a higher level."""
    match = re.search(rf"^(#+) {re.escape(title)}\n", README, re.MULTILINE)
    assert match, f"README has no section {title!r}"
    level = len(match.group(1))
    rest = README[match.end():]
    end = re.search(rf"^#{{1,{level}}} ", rest, re.MULTILINE)
    return rest[: end.start() if end else len(rest)]


def test_deployment_sections_are_there():
    deployment = section("Deployment")
    for title in ("Docker Compose", "Astro", "Kubernetes", "Staging on object storage",
                  "The original spec's environment variables"):
        assert section(title).strip(), title
    for title in ("Docker Compose", "Astro", "Kubernetes"):
        assert "Manual step" in section(title) and "Checked here" in section(title), title
    assert "docker compose up --build" in deployment and "astro dev start" in deployment
    assert "helm upgrade --install" in deployment


def test_each_variable_of_the_original_spec_is_mapped_or_marked_unused():
    table = section("The original spec's environment variables")
    rows = {row.split("|")[1].strip().strip("`"): row.split("|")[2].strip()
            for row in table.splitlines() if row.startswith("| `")}
    assert set(rows) == {"DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS", "LOG_LEVEL", "BUFFER_SIZE"}
    assert rows["DATABASE_URL"].startswith("not read") and "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN" in rows["DATABASE_URL"]
    assert rows["KAFKA_BOOTSTRAP_SERVERS"].startswith("not used")
    assert "AIRFLOW__LOGGING__LOGGING_LEVEL" in rows["LOG_LEVEL"]
    assert rows["BUFFER_SIZE"].startswith("not read") and "batch_size" in rows["BUFFER_SIZE"]
    # Not read means not read: the package mentions none of the four.
    package = "\n".join(p.read_text() for p in (REPO_ROOT / "airflow_provider_cdc").rglob("*.py"))
    for name in rows:
        assert name not in package, name


def test_scaling_out_explains_the_parallel_snapshot():
    scaling = section("Scaling out")
    assert "**The parallel snapshot.**" in scaling and "Planned, not built" not in scaling
    # What a user sets, and the tasks that appear in the DAG: the names the code uses.
    for word in ("snapshot_ranges: N", "snapshot_range_min_rows", "`snapshot_ranges`", "`snapshot_range`",
                 "dynamic task mapping"):
        assert word in scaling, word
    for word in ("LocalExecutor", "CeleryExecutor", "KubernetesExecutor", "CDC_STAGING_URL", "triggerer"):
        assert word in scaling, word


def test_files_the_deployment_sections_name_exist():
    text = section("Deployment") + section("Scaling out")
    paths = set(re.findall(r"`((?:deploy|include|dags|scripts|tests|\.astro)/[\w./-]+|Dockerfile|"
                           r"requirements\.txt|packages\.txt|airflow_settings\.yaml|docker-compose\.yaml)`", text))
    assert {"deploy/Dockerfile", "deploy/helm/values.yaml", "deploy/compose/celery.env"} <= paths
    missing = sorted(p for p in paths if not (REPO_ROOT / p).exists())
    assert not missing, missing
