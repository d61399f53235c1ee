"""Every metric the service declares is observed somewhere, and each is defined once."""
from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from service.metrics import Metrics

SERVICE = Path(__file__).resolve().parents[2] / "service"


def test_every_declared_metric_is_observed_in_the_service_code():
    metrics = Metrics(CollectorRegistry())
    declared = [name for name, value in vars(metrics).items() if isinstance(value, MetricWrapperBase)]
    code = "\n".join(p.read_text() for p in SERVICE.rglob("*.py") if p.name != "metrics.py")
    unobserved = [name for name in declared if not re.search(rf"metrics\.{name}\.", code)]
    assert declared and not unobserved, f"declared but never observed: {unobserved}"


def test_metric_names_follow_one_prefix_and_base_units():
    names = [m.name for m in Metrics(CollectorRegistry()).registry.collect()]
    assert len(names) == len(set(names))
    assert all(n.startswith("dhrd_") for n in names)
    assert all(not n.endswith("_ms") for n in names)
