"""What the official Dagster Helm chart renders into the instance's dagster.yaml from our values,
for the two settings that decide the run queue: the run coordinator and ``concurrency``.

No chart renderer (helm) is reachable here, so this transcribes the chart's own templates and
defaults, line for line, from dagster-io/dagster (``helm/dagster/templates/helpers/instance/``):

* ``_concurrency.tpl`` (added by PR #33194): the block renders only when
  ``concurrency.enabled``; it ``fail``s when the run coordinator sets the same limits.
* ``_run-coordinator.tpl``, in two versions: before the fix of issue #33225 it renders
  ``max_concurrent_runs: -1`` whenever the queued run coordinator's config renders at all and
  ``maxConcurrentRuns`` is unset; after it, not when ``concurrency.enabled``.
* the chart's defaults for ``queuedRunCoordinator`` (values.yaml, since PR #12737:
  ``maxConcurrentRuns: ~``, ``tagConcurrencyLimits: []``, ``dequeueUseThreads: true``,
  ``dequeueNumWorkers: 4``) and the keys its schema allows
  (``helm/dagster/schema/schema/charts/dagster/subschema/{daemon,concurrency,webserver}.py``).
* Helm's rule that ``null`` in a values file deletes a default key
  (https://helm.sh/docs/chart_template_guide/values_files/#deleting-a-default-key).

Whether the result is an instance Dagster accepts is then asked of Dagster itself.
"""

from __future__ import annotations

import copy
from typing import Any

QUEUED_RUN_COORDINATOR_DEFAULTS: dict[str, Any] = {
    "maxConcurrentRuns": None,
    "tagConcurrencyLimits": [],
    "dequeueIntervalSeconds": None,
    "dequeueUseThreads": True,
    "dequeueNumWorkers": 4,
}
CHART_DEFAULTS: dict[str, Any] = {
    "dagsterDaemon": {
        "runCoordinator": {
            "enabled": True,
            "type": "QueuedRunCoordinator",
            "config": {"queuedRunCoordinator": QUEUED_RUN_COORDINATOR_DEFAULTS},
        }
    },
    "concurrency": {
        "enabled": False,
        "pools": {"defaultLimit": None, "granularity": None, "opGranularityRunBuffer": None},
        "runs": {"maxConcurrentRuns": None, "tagConcurrencyLimits": []},
    },
}
#: The keys the chart's schema allows (pydantic models with extra="forbid").
QUEUED_RUN_COORDINATOR_KEYS = {
    "maxConcurrentRuns", "tagConcurrencyLimits", "dequeueIntervalSeconds", "dequeueNumWorkers",
    "dequeueUseThreads", "blockOpConcurrencyLimitedRuns",
}  # fmt: skip
CONCURRENCY_KEYS = {"enabled": None, "pools": {"defaultLimit", "granularity",
                    "opGranularityRunBuffer"}, "runs": {"maxConcurrentRuns",
                    "tagConcurrencyLimits"}}  # fmt: skip
TAG_LIMIT_KEYS = {"key", "value", "limit"}
WEBSERVER_KEYS = {
    "replicaCount", "image", "nameOverride", "pathPrefix", "service", "workspace", "env",
    "envConfigMaps", "envSecrets", "deploymentLabels", "labels", "nodeSelector", "affinity",
    "tolerations", "podSecurityContext", "securityContext", "resources", "readinessProbe",
    "livenessProbe", "startupProbe", "annotations", "enableReadOnly", "dbStatementTimeout",
    "dbPoolRecycle", "logLevel", "schedulerName", "volumeMounts", "volumes",
}  # fmt: skip


class ChartFailure(Exception):
    """The chart's template called ``fail``: ``helm install`` stops with this message."""


def merged(defaults: Any, values: Any) -> Any:
    """``values`` over the chart's ``defaults`` as Helm merges them (a null deletes a key)."""
    if not isinstance(defaults, dict) or not isinstance(values, dict):
        return copy.deepcopy(values)
    result = copy.deepcopy(defaults)
    for key, value in values.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merged(result.get(key), value)
    return result


def _empty(value: Any) -> bool:
    """Sprig's notion of empty (``compact``, ``if``): nil, false, 0, "", [] and {}."""
    return value is None or value is False or value == 0 or value in ("", [], {})


def _run_coordinator(values: dict, fixed: bool) -> dict:
    """``dagsterYaml.runCoordinator.queued``; ``fixed``: the version after issue #33225."""
    qrc = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    enabled = bool(values.get("concurrency", {}).get("enabled"))
    rendered: dict[str, Any] = {
        "module": "dagster.core.run_coordinator",
        "class": "QueuedRunCoordinator",
    }
    if all(_empty(v) for v in qrc.values()):
        return rendered
    config: dict[str, Any] = {}
    if not fixed or not enabled or qrc.get("maxConcurrentRuns") is not None:
        config["max_concurrent_runs"] = (
            -1 if qrc.get("maxConcurrentRuns") is None else qrc["maxConcurrentRuns"]
        )
    tags = qrc.get("tagConcurrencyLimits")
    if tags and (not fixed or not enabled or len(tags) > 0):
        config["tag_concurrency_limits"] = tags
    for key, name in [("dequeueIntervalSeconds", "dequeue_interval_seconds"),
                      ("dequeueUseThreads", "dequeue_use_threads"),
                      ("dequeueNumWorkers", "dequeue_num_workers")]:  # fmt: skip
        if not _empty(qrc.get(key)):
            config[name] = qrc[key]
    block = qrc.get("blockOpConcurrencyLimitedRuns")
    if block:
        config["block_op_concurrency_limited_runs"] = {
            "enabled": block["enabled"],
            "op_concurrency_slot_buffer": block["opConcurrencySlotBuffer"],
        }
    rendered["config"] = config
    return rendered


def _concurrency(values: dict) -> dict:
    """``dagsterYaml.concurrency`` (rendered only when ``concurrency.enabled``)."""
    pools, runs = values["concurrency"]["pools"], values["concurrency"]["runs"]
    coordinator = values["dagsterDaemon"]["runCoordinator"]
    if coordinator["enabled"] and coordinator["type"] == "QueuedRunCoordinator":
        qrc = coordinator["config"]["queuedRunCoordinator"]
        if runs.get("maxConcurrentRuns") is not None and qrc.get("maxConcurrentRuns") is not None:
            raise ChartFailure(
                "Cannot set both concurrency.runs.maxConcurrentRuns and "
                "dagsterDaemon.runCoordinator.config.queuedRunCoordinator.maxConcurrentRuns"
            )
        if runs.get("tagConcurrencyLimits") and qrc.get("tagConcurrencyLimits"):
            raise ChartFailure(
                "Cannot set both concurrency.runs.tagConcurrencyLimits and "
                "dagsterDaemon.runCoordinator.config.queuedRunCoordinator.tagConcurrencyLimits"
            )
    rendered: dict[str, Any] = {}
    if (
        pools.get("defaultLimit") is not None
        or pools.get("granularity")
        or pools.get("opGranularityRunBuffer") is not None
    ):
        rendered["pools"] = {
            name: pools[key]
            for key, name in [("defaultLimit", "default_limit"), ("granularity", "granularity"),
                              ("opGranularityRunBuffer", "op_granularity_run_buffer")]
            if pools.get(key) is not None
        }  # fmt: skip
    if runs.get("maxConcurrentRuns") is not None or runs.get("tagConcurrencyLimits"):
        rendered["runs"] = {}
        if runs.get("maxConcurrentRuns") is not None:
            rendered["runs"]["max_concurrent_runs"] = runs["maxConcurrentRuns"]
        if runs.get("tagConcurrencyLimits"):
            rendered["runs"]["tag_concurrency_limits"] = [
                {k: limit[k] for k in ("key", "value", "limit") if limit.get(k) is not None}
                for limit in runs["tagConcurrencyLimits"]
            ]
    return rendered


def rendered_instance(values: dict, fixed: bool) -> dict:
    """The run coordinator and concurrency sections of the dagster.yaml the chart renders from
    ``values`` (``fixed``: with the chart's fix of issue #33225). Raises ``ChartFailure``."""
    chart_values = merged(CHART_DEFAULTS, values)
    instance: dict[str, Any] = {"run_coordinator": _run_coordinator(chart_values, fixed)}
    if chart_values["concurrency"].get("enabled"):
        instance["concurrency"] = _concurrency(chart_values)
    return instance
