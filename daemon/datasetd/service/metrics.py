"""Prometheus metrics for `[daemon] metrics = "HOST:PORT"`, read from the status board at each scrape.

A custom collector rather than gauges updated as work happens: the board is
already the one place every thread reports to, so a scrape is always current
and nothing can drift. Exposed families (all gauges):

    datasetd_info{version,manifest_sha256}                    1
    datasetd_state{state}                                      1 for the daemon's state, 0 for the others
    datasetd_manifest_error                                    1 while an edited manifest is rejected
    datasetd_component_phase{component,phase}                  1 for the component's phase, 0 for the others
    datasetd_component_{bytes,files,classes}_{done,total}{component}
    datasetd_component_rate_bytes_per_second{component}
    datasetd_component_eta_seconds{component}                  only while an ETA is known
    datasetd_component_errors{component}                       1 while the component has a last_error
    datasetd_transport_{key}{component}                        numeric transport detail: peers, seeds,
                                                               dht_nodes, pieces, num_pieces, connections
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import generate_latest, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from datasetd.state.status import PHASES

Snapshot = Callable[[], Mapping[str, Any]]
STATES = ("running", "converged", "failed", "stopped")
_COUNTS = ("bytes_done", "bytes_total", "files_done", "files_total", "classes_done", "classes_total")
_NOT_NAME = re.compile(r"[^a-zA-Z0-9_]")


class StatusCollector(Collector):
    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot()
        yield from _daemon_families(snap)
        components: Mapping[str, Mapping[str, Any]] = snap.get("components", {})
        yield from _component_families(components)
        yield from _transport_families(components)


def _daemon_families(snap: Mapping[str, Any]) -> Iterator[Metric]:
    info = GaugeMetricFamily("datasetd_info", "datasetd version and manifest", labels=["version", "manifest_sha256"])
    info.add_metric([str(snap.get("version", "")), str(snap.get("manifest", {}).get("sha256", ""))], 1)
    yield info
    state = GaugeMetricFamily("datasetd_state", "1 for the daemon's current state", labels=["state"])
    for name in STATES:
        state.add_metric([name], 1 if snap.get("state") == name else 0)
    yield state
    yield GaugeMetricFamily("datasetd_manifest_error", "1 while an edited manifest is rejected",
                            value=1 if snap.get("manifest_error") else 0)


def _component_families(components: Mapping[str, Mapping[str, Any]]) -> Iterator[Metric]:
    phase = GaugeMetricFamily("datasetd_component_phase", "1 for the component's current phase",
                              labels=["component", "phase"])
    counts = {key: GaugeMetricFamily(f"datasetd_component_{key}", key.replace("_", " "), labels=["component"])
              for key in _COUNTS}
    rate = GaugeMetricFamily("datasetd_component_rate_bytes_per_second", "current transfer or unpack rate",
                             labels=["component"])
    eta = GaugeMetricFamily("datasetd_component_eta_seconds", "estimated seconds left", labels=["component"])
    errors = GaugeMetricFamily("datasetd_component_errors", "1 while the component has an error",
                               labels=["component"])
    for name, c in sorted(components.items()):
        for p in PHASES:
            phase.add_metric([name, p], 1 if c.get("phase") == p else 0)
        for key, family in counts.items():
            family.add_metric([name], float(c.get(key) or 0))
        rate.add_metric([name], float(c.get("rate") or 0.0))
        if c.get("eta_seconds") is not None:
            eta.add_metric([name], float(c["eta_seconds"]))
        errors.add_metric([name], 1 if c.get("last_error") else 0)
    yield phase
    yield from counts.values()
    yield from (rate, eta, errors)


def _transport_families(components: Mapping[str, Mapping[str, Any]]) -> Iterator[Metric]:
    families: dict[str, GaugeMetricFamily] = {}
    for name, c in sorted(components.items()):
        for key, value in sorted((c.get("detail") or {}).items()):
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue  # health hints and URLs are text: status.json carries them
            metric = "datasetd_transport_" + _NOT_NAME.sub("_", key)
            family = families.setdefault(metric, GaugeMetricFamily(metric, f"transport detail {key}",
                                                                   labels=["component"]))
            family.add_metric([name], float(value))
    yield from families.values()


def parse_address(text: str) -> tuple[str, int]:
    """'127.0.0.1:9877', '[::1]:9877' or ':9877' (every interface); port 0 picks a free one."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(text)
    host = host.removeprefix("[").removesuffix("]")
    return host or "0.0.0.0", int(port)  # noqa: S104 - ':PORT' asks for every interface


def exposition(snapshot: Snapshot) -> Callable[[], bytes]:
    """The same families as text, for the web page's /metrics (service/web.py)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(snapshot))
    return lambda: bytes(generate_latest(registry))


class MetricsServer:
    """The endpoint on a daemon thread; `address` is where it really listens (port 0 resolved)."""

    def __init__(self, host: str, port: int, snapshot: Snapshot) -> None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(StatusCollector(snapshot))
        self.server, self.thread = start_http_server(port, addr=host, registry=registry)
        bound_host, bound_port = self.server.server_address[:2]
        text = bound_host.decode() if isinstance(bound_host, bytes) else str(bound_host)
        self.address = f"[{text}]:{bound_port}" if ":" in text else f"{text}:{bound_port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
