"""Prometheus metrics of one app: jobs by outcome, durations, queue depth, busy slots, model loads, each
owner's jobs (a bounded label: ``owners.labelled``).

Each app owns its ``CollectorRegistry`` (two apps in one process, as in the tests, must not
share counters). Job counters are fed by a backend observer, so UI, Gradio API and REST
jobs all count; the gauges are read from ``backend.status()`` at scrape time, so they are
never stale.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from studio.backend import Backend
from studio.errors import QueueFull, StudioError
from studio.owners import METRIC_OWNERS, OTHER, labelled

# Seconds; tiny CPU jobs finish in well under a second, big GPU renders take minutes.
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)

OK = "ok"
REJECTED = "rejected"  # refused at admission (queue full): never ran


def outcome_of(result_or_exception) -> str:
    """``ok``, ``rejected``, or the error's code (``cancelled``, ``timeout``, ``out_of_memory``, ...)."""
    if isinstance(result_or_exception, QueueFull):
        return REJECTED
    if isinstance(result_or_exception, StudioError):
        return result_or_exception.code or result_or_exception.type
    if isinstance(result_or_exception, BaseException):
        return "error"
    return OK


class StudioMetrics:
    """The registry and the instruments; ``render()`` gives the Prometheus text exposition."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, backend: Backend | None = None):
        self.registry = CollectorRegistry()
        self.jobs = Counter(
            "studio_jobs", "Generation jobs by model and outcome (ok, rejected, or the error code).",
            ["model", "outcome"], registry=self.registry,
        )
        self.duration = Histogram(
            "studio_job_duration_seconds", "Wall time of finished jobs, queueing included.",
            ["model"], buckets=DURATION_BUCKETS, registry=self.registry,
        )
        self.backend = backend
        if backend is not None:
            self.registry.register(_SlotCollector(backend))

    def observe(self, job, result_or_exception, duration_s: float) -> None:
        """A backend observer: called once per finished job, from whichever thread finished it."""
        model = getattr(getattr(job, "spec", None), "id", None) or "unknown"
        outcome = outcome_of(result_or_exception)
        self.jobs.labels(model=model, outcome=outcome).inc()
        if outcome == OK:
            self.duration.labels(model=model).observe(max(0.0, float(duration_s)))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _SlotCollector:
    """Gauges and load counters read from the backend's snapshot at scrape time."""

    def __init__(self, backend: Backend):
        self.backend = backend

    def describe(self):
        return _families()

    def collect(self):
        queue, room, busy, alive, loads, done, total, owner_jobs = _families()
        try:
            status = self.backend.status()
        except Exception:  # a backend not started or shutting down: report nothing rather than fail the scrape
            return []
        queue.add_metric([], float(status.queue_depth))
        room.add_metric([], float(status.waiting_room))
        for slot in status.slots:
            labels = [str(slot.index), slot.device]
            busy.add_metric(labels, 1.0 if slot.busy else 0.0)
            alive.add_metric(labels, 1.0 if slot.alive else 0.0)
            loads.add_metric(labels, float(slot.loads))
        for download in status.downloads:
            done.add_metric([download.model], float(download.bytes_done))
            total.add_metric([download.model], float(download.bytes_total))
        # Each owner's jobs, for the top owners by name and the rest as "other" (a bounded label).
        jobs = {owner.owner: (owner.queued, owner.running, owner.downloading) for owner in status.owners}
        shown = set(labelled({owner: float(sum(counts)) for owner, counts in jobs.items()}))
        for state, index in (("queued", 0), ("running", 1), ("downloading", 2)):
            by_label: dict[str, float] = {}
            for owner, counts in jobs.items():
                label = owner if owner in shown else OTHER
                by_label[label] = by_label.get(label, 0.0) + counts[index]
            for label, count in by_label.items():
                owner_jobs.add_metric([label, state], count)
        return [queue, room, busy, alive, loads, done, total, owner_jobs]


def _families():
    return [
        GaugeMetricFamily("studio_queue_depth", "Jobs admitted and waiting for a slot."),
        GaugeMetricFamily("studio_waiting_room", "Jobs past --max-queue waiting (up to --queue-wait) for a place."),
        GaugeMetricFamily("studio_slot_busy", "1 while the slot runs a job.", labels=["slot", "device"]),
        GaugeMetricFamily("studio_slot_alive", "1 while the slot's worker process is up.", labels=["slot", "device"]),
        CounterMetricFamily("studio_model_loads", "Pipelines loaded by the slot (preloads and swaps).",
                            labels=["slot", "device"]),
        GaugeMetricFamily("studio_download_bytes_done", "Bytes of a model's files in the cache, while it downloads.",
                          labels=["model"]),
        GaugeMetricFamily("studio_download_bytes_total", "Bytes of a model's files to have, while it downloads.",
                          labels=["model"]),
        GaugeMetricFamily("studio_owner_jobs", f"Each owner's jobs (an API key's name, a login or an address; the "
                          f"top {METRIC_OWNERS} by name, the rest as '{OTHER}') queued, running or downloading.",
                          labels=["owner", "state"]),
    ]
