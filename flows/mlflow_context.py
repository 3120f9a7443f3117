"""MLflow run tags naming the Prefect flow run an MLflow run was started in.

Registered as an MLflow run context provider (`pyproject.toml`, entry point group
`mlflow.run_context_provider`), so every run the pipeline starts inside a flow run, training or
adaptation, carries `prefect.flow_run_id`, `prefect.flow_run_name` and `prefect.flow_name`
(and `prefect.flow_run_url` when Prefect knows its UI's address): from a model version's run, a
user finds the flow run, its logs and its report artifact. Runs started outside Prefect get none.
"""

from __future__ import annotations

import logging
import sys

from mlflow.tracking.context.abstract_context import RunContextProvider

logger = logging.getLogger(__name__)


class PrefectFlowRunContext(RunContextProvider):
    def in_context(self) -> bool:
        if "prefect" not in sys.modules:  # not imported: no flow run (and no import cost)
            return False
        from prefect.runtime import flow_run

        return flow_run.id is not None

    def tags(self) -> dict[str, str]:
        from prefect.runtime import flow_run
        from prefect.settings import PREFECT_UI_URL

        found = {"prefect.flow_run_id": flow_run.id}  # from the run's context: no API call
        try:  # the name and flow may need the API, which may not answer
            found |= {
                "prefect.flow_run_name": flow_run.name,
                "prefect.flow_name": flow_run.flow_name,
            }
            if PREFECT_UI_URL.value():  # without it Prefect builds "None/flow-runs/..."
                found["prefect.flow_run_url"] = flow_run.ui_url
        except Exception as exc:  # a tag is never worth failing the run it would describe
            logger.warning("could not read the Prefect flow run for MLflow tags: %s", exc)
        return {key: str(value) for key, value in found.items() if value is not None}
