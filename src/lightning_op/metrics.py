"""The operator's Prometheus metrics, in one registry that ``lightning-op operator`` serves on ``/metrics``.

One ``Metrics`` object per operator process, created by the command (``cli/operator_run.py``) and
handed to the controllers through kopf's ``memo`` (``controllers.common.Runtime``), never a module
global: tests start several operators in one process. Names follow Prometheus conventions
(``lightning_op_`` prefix, ``_total`` counters, ``_seconds`` durations).

- ``lightning_op_reconciles_total{kind,handler,outcome}`` and
  ``lightning_op_reconcile_duration_seconds{kind}``: every handler call (``controllers.common.instrumented``);
- ``lightning_op_objects{kind,phase}``: objects per phase, from the phases the controllers write;
- ``lightning_op_training_progress_percent{namespace,name}``: per FineTuneJob, set by its controller;
- ``lightning_op_promotions_total{namespace,outcome}`` and ``lightning_op_rollbacks_total{namespace,reason}``;
- ``lightning_op_labeling_score{namespace,name,statistic}`` and
  ``lightning_op_labeling_verdict{namespace,name,verdict}`` (1 for the current verdict): a
  RewardLabeling's last dry run, from its status;
- ``lightning_op_finetune_score{namespace,name,model}``: a FineTuneJob's ``baseline`` and ``best`` scores.

Imports only prometheus-client.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

#: seconds; reconciles are mostly a few API calls, training-status polls read a pod log
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """The operator's metrics and the registry that holds them."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.reconciles = Counter(
            "lightning_op_reconciles",
            "Handler calls of the operator, by kind, handler and outcome (ok, retry, failed, error).",
            ["kind", "handler", "outcome"],
            registry=self.registry,
        )
        self.reconcile_seconds = Histogram(
            "lightning_op_reconcile_duration_seconds",
            "How long one handler call took, by kind.",
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.objects = Gauge(
            "lightning_op_objects",
            "Custom resources the operator handles, by kind and phase.",
            ["kind", "phase"],
            registry=self.registry,
        )
        self.training_progress = Gauge(
            "lightning_op_training_progress_percent",
            "Training progress of a FineTuneJob's current round, in percent.",
            ["namespace", "name"],
            registry=self.registry,
        )
        self.promotions = Counter(
            "lightning_op_promotions",
            "ModelPromotions that finished, by outcome (promoted, rolled_back, failed).",
            ["namespace", "outcome"],
            registry=self.registry,
        )
        self.rollbacks = Counter(
            "lightning_op_rollbacks",
            "Automatic rollbacks of a promoted model, by reason.",
            ["namespace", "reason"],
            registry=self.registry,
        )
        self.labeling_score = Gauge(
            "lightning_op_labeling_score",
            "A RewardLabeling's last dry run: mean, std, fractionAboveZero or fractionPerfect of its scores.",
            ["namespace", "name", "statistic"],
            registry=self.registry,
        )
        self.labeling_verdict = Gauge(
            "lightning_op_labeling_verdict",
            "1 for a RewardLabeling's current verdict (GO, WARNING, NO-GO).",
            ["namespace", "name", "verdict"],
            registry=self.registry,
        )
        self.finetune_score = Gauge(
            "lightning_op_finetune_score",
            "A FineTuneJob's evaluation score of the base model (baseline) and of its best round (best).",
            ["namespace", "name", "model"],
            registry=self.registry,
        )
        self._phases: dict[tuple[str, str, str], str] = {}
        #: the figure series of each object: (gauge, label values) to remove when it changes or goes
        self._figures: dict[tuple[str, str, str], set[tuple[Gauge, tuple[str, ...]]]] = {}
        self._lock = threading.Lock()

    def observe_reconcile(self, kind: str, handler: str, outcome: str, seconds: float) -> None:
        self.reconciles.labels(kind=kind, handler=handler, outcome=outcome).inc()
        self.reconcile_seconds.labels(kind=kind).observe(seconds)

    def observe_phase(self, kind: str, namespace: str, name: str, phase: str | None) -> None:
        """Record an object's current phase (None: the object is gone, and its figures go with it,
        see ``observe_figures``) and update the per-phase gauge."""
        key = (kind, namespace, name)
        with self._lock:
            if phase is None:
                self._set_figures(key, {})
            old = self._phases.get(key)
            if old == phase:
                return
            if old is not None:
                self.objects.labels(kind=kind, phase=old).dec()
            if phase is None:
                self._phases.pop(key, None)
            else:
                self._phases[key] = phase
                self.objects.labels(kind=kind, phase=phase).inc()

    def observe_figures(self, kind: str, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        """The key figures of a RewardLabeling's or FineTuneJob's ``status``; other kinds have none.
        ``observe_phase(..., None)`` removes them with the object."""
        wanted: dict[tuple[Gauge, tuple[str, ...]], float] = {}
        if kind == "RewardLabeling":
            scores = status.get("scores") or {}
            for statistic in ("mean", "std", "fractionAboveZero", "fractionPerfect"):
                if isinstance(scores.get(statistic), int | float):
                    wanted[(self.labeling_score, (namespace, name, statistic))] = float(scores[statistic])
            if status.get("verdict"):
                wanted[(self.labeling_verdict, (namespace, name, str(status["verdict"])))] = 1.0
        elif kind == "FineTuneJob":
            for model, score in (
                ("baseline", (status.get("baseline") or {}).get("score")),
                ("best", (status.get("result") or {}).get("score")),
            ):
                if isinstance(score, int | float):
                    wanted[(self.finetune_score, (namespace, name, model))] = float(score)
        with self._lock:
            self._set_figures((kind, namespace, name), wanted)

    def _set_figures(
        self, key: tuple[str, str, str], wanted: dict[tuple[Gauge, tuple[str, ...]], float]
    ) -> None:
        """Set one object's figure series to ``wanted``, removing the others; under ``_lock``."""
        for gauge, labels in self._figures.get(key, set()) - set(wanted):
            gauge.remove(*labels)
        for (gauge, labels), value in wanted.items():
            gauge.labels(*labels).set(value)
        if wanted:
            self._figures[key] = set(wanted)
        else:
            self._figures.pop(key, None)

    def set_training_progress(self, namespace: str, name: str, percent: float | None) -> None:
        """A FineTuneJob's progress; None removes its series (the job is gone)."""
        if percent is None:
            try:
                self.training_progress.remove(namespace, name)
            except KeyError:
                pass
            return
        self.training_progress.labels(namespace=namespace, name=name).set(percent)

    def count_promotion(self, namespace: str, outcome: str) -> None:
        self.promotions.labels(namespace=namespace, outcome=outcome).inc()

    def count_rollback(self, namespace: str, reason: str) -> None:
        self.rollbacks.labels(namespace=namespace, reason=reason).inc()

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format (``CONTENT_TYPE``)."""
        return generate_latest(self.registry)
