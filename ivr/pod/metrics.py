"""The pod's ``/metrics``: every worker's exposition, each sample labelled ``worker="i"``, one family each."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


class _Merged:
    """A collector that yields the workers' families merged (Prometheus wants each family once)."""

    def __init__(self, expositions: Mapping[str, str], extra: list[Metric]) -> None:
        self._expositions = expositions
        self._extra = extra

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for worker, text in self._expositions.items():
            for family in text_string_to_metric_families(text):
                merged = families.get(family.name)
                if merged is None:
                    merged = families[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
                merged.samples += [
                    Sample(s.name, {**s.labels, "worker": worker}, s.value, s.timestamp, s.exemplar)
                    for s in family.samples
                ]
        yield from families.values()
        yield from self._extra


def merge_expositions(expositions: Mapping[str, str], extra: list[Metric] | None = None) -> bytes:
    """``expositions``: worker label -> that worker's ``/metrics`` text. ``extra``: the pod's own families."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged(expositions, extra or []))
    return generate_latest(registry)
