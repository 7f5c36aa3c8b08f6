"""Provider registration: Airflow finds the package through its entry point, and every module it names imports."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_provider_cdc.get_provider_info import get_provider_info

REPO_ROOT = Path(__file__).resolve().parent.parent
MODULE_SECTIONS = ("sensors", "operators", "hooks", "triggers")
EXPECTED_CLASSES = {
    "airflow_provider_cdc.sensors.changes": ["CdcChangesSensor"],
    "airflow_provider_cdc.operators.cdc": ["CdcCaptureOperator", "CdcStageOperator", "CdcLoadOperator",
                                           "CdcCommitOperator", "CdcFusedOperator"],
    "airflow_provider_cdc.operators.quarantine": ["CdcQuarantineReplayOperator"],
    "airflow_provider_cdc.operators.resnapshot": ["CdcResnapshotOperator"],
    "airflow_provider_cdc.hooks.cdc": ["CdcHook"],
    "airflow_provider_cdc.triggers.changes": ["ChangesAvailableTrigger"],
}


def airflow_cli(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "airflow", *args], capture_output=True, text=True, env=os.environ.copy(),
        cwd=REPO_ROOT, timeout=300,
    )
    assert result.returncode == 0, f"airflow {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def test_airflow_providers_list_shows_the_package():
    assert "airflow-provider-cdc" in airflow_cli("providers", "list")

    providers = {p["package_name"]: p for p in json.loads(airflow_cli("providers", "list", "-o", "json"))}
    assert providers["airflow-provider-cdc"]["version"] == "0.1.0"


def test_airflow_registers_the_trigger_module():
    triggers = json.loads(airflow_cli("providers", "triggers", "-o", "json"))
    ours = [t for t in triggers if t["package_name"] == "airflow-provider-cdc"]
    assert [t["class"] for t in ours] == ["airflow_provider_cdc.triggers.changes"]


def test_provider_info_matches_airflows_schema():
    import jsonschema

    schema_path = Path(importlib.import_module("airflow").__file__).parent / "provider_info.schema.json"
    jsonschema.validate(get_provider_info(), json.loads(schema_path.read_text()))
    assert get_provider_info()["package-name"] == "airflow-provider-cdc"


def named_modules() -> list[str]:
    info = get_provider_info()
    return [module for section in MODULE_SECTIONS for entry in info.get(section, [])
            for module in entry["python-modules"]]


def test_provider_info_names_every_kind_of_module():
    assert sorted(named_modules()) == sorted(EXPECTED_CLASSES)


@pytest.mark.parametrize("module", named_modules())
def test_every_named_module_imports(module: str):
    imported = importlib.import_module(module)
    for name in EXPECTED_CLASSES[module]:
        assert isinstance(getattr(imported, name), type), f"{module} lacks {name}"


def test_integrations_named_by_modules_are_declared():
    info = get_provider_info()
    declared = {i["integration-name"] for i in info["integrations"]}
    for section in MODULE_SECTIONS:
        for entry in info[section]:
            assert entry["integration-name"] in declared


def test_airflow_registers_the_failure_notifier():
    from airflow.sdk import BaseNotifier

    listed = json.loads(airflow_cli("providers", "notifications", "-o", "json"))
    ours = [n["notification_class_name"] for n in listed if n["notification_class_name"].startswith("airflow_prov")]
    assert ours == get_provider_info()["notifications"] == ["airflow_provider_cdc.notifiers.CdcFailureNotifier"]
    module, _, name = ours[0].rpartition(".")
    assert issubclass(getattr(importlib.import_module(module), name), BaseNotifier)


def test_the_how_to_guides_are_documents_of_the_repository():
    (integration,) = get_provider_info()["integrations"]
    guides = integration["how-to-guide"]
    assert guides == ["/docs/operators.md", "/docs/connections.md"]
    for guide in guides:
        assert (REPO_ROOT / guide.lstrip("/")).is_file(), guide


def test_the_connection_types_used_are_those_of_the_connectors_and_staging():
    """Each connector's Connections are resolved by its factory's provider hook; staging on S3 uses an ``aws``
    Connection. They are listed, with their hooks, but never registered as this package's own types."""
    from airflow_provider_cdc.connectors import registry

    info = get_provider_info()
    assert "connection-types" not in info  # registering postgres here would take it over from its provider
    used = {entry["connection-type"]: entry["hook-class-name"] for entry in info["connection-types-used"]}
    hooks = {}
    for connector_type in registry.CONNECTOR_MODULES:
        ref = registry.factory(connector_type).airflow_hook
        if ref is not None:
            module, _, name = ref.classpath.rpartition(".")
            hooks[getattr(importlib.import_module(module), name).conn_type] = ref.classpath
    assert hooks == {"postgres": used["postgres"], "mysql": used["mysql"], "mongo": used["mongo"]}
    assert set(used) == {*hooks, "aws"}
    module, _, name = used["aws"].rpartition(".")
    assert getattr(importlib.import_module(module), name).conn_type == "aws"
    for entry in info["connection-types-used"]:
        path, _, anchor = entry["how-to-guide"].lstrip("/").partition("#")
        assert (REPO_ROOT / path).is_file() and anchor, entry
