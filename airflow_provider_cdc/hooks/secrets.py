"""Secrets that rules use (the salt of ``hash()``), looked up where Airflow keeps secrets, never in the YAML.

``secret_value(name)`` is the Airflow Variable ``name``, or else the password of the Airflow Connection ``name``
(both go through Airflow's secrets backends). The value is never logged; a name with neither is an error naming
both places.
"""

from __future__ import annotations

from airflow_provider_cdc.errors import CdcError
from airflow_provider_cdc.positions import _in_task


class SecretNotFound(CdcError):
    terminal = True


def secret_value(name: str) -> str:
    value: object
    if _in_task():
        from airflow.sdk import Variable

        value = Variable.get(name, default=None)
    else:
        from airflow.models import Variable as VariableModel

        value = VariableModel.get(name, default_var=None)
    if value is not None:
        return str(value)
    from airflow.sdk import BaseHook

    try:
        connection = BaseHook.get_connection(name)
    except Exception:  # Airflow raises different errors for "not found" by version and secrets backend
        connection = None
    if connection is not None and connection.password:
        return str(connection.password)
    raise SecretNotFound(f"secret {name!r} (a rule's salt) is neither an Airflow Variable nor the password of an "
                         f"Airflow Connection; create one of them (airflow variables set {name} <value>)")
