"""The server's numbers in Prometheus' text format (`GET /metrics`).

Counters and histograms are updated by the scheduler thread and read by the web
thread, so each change and each rendering holds one lock. Gauges (requests running and
waiting, KV pages) are read from the scheduler's last published snapshot at rendering.
The names follow Prometheus' conventions: `disco_` prefix, base units (seconds),
`_total` on counters.
"""
from __future__ import annotations

import bisect
import threading
from typing import Callable, Sequence

# time to first token: from the request's arrival to its first token (queueing and prefill)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# inter-token latency: between two tokens of one request (one decode step, or more)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Histogram:
    """Cumulative buckets (each counts the observations <= its upper bound), a sum and a count."""

    def __init__(self, buckets: Sequence[float]):
        self.bounds = tuple(sorted(buckets))
        self.counts = [0] * (len(self.bounds) + 1)     # the last one: above every bound (+Inf)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str) -> list[str]:
        out, running = [], 0
        for bound, n in zip(self.bounds + (float("inf"),), self.counts):
            running += n
            le = "+Inf" if bound == float("inf") else repr(float(bound))
            out.append(f'{name}_bucket{{le="{le}"}} {running}')
        out += [f"{name}_sum {self.sum!r}", f"{name}_count {self.count}"]
        return out


class Metrics:
    """Everything /metrics shows. `gauges` is called at rendering for the current values
    (requests running and waiting, KV pages used and total, healthy)."""

    def __init__(self, gauges: Callable[[], dict]):
        self._lock = threading.Lock()
        self._gauges = gauges
        self.ttft = Histogram(TTFT_BUCKETS)
        self.itl = Histogram(ITL_BUCKETS)
        self.generated_tokens = 0
        self.prompt_tokens = 0
        self.steps = 0
        self.finished: dict[str, int] = {}          # finish reason -> requests
        self.rejected: dict[str, int] = {}          # why (bad_request, overloaded, ...) -> requests

    def first_token(self, seconds: float) -> None:
        with self._lock:
            self.ttft.observe(seconds)

    def tokens(self, count: int, gaps: Sequence[float]) -> None:
        """One engine step gave `count` new tokens; `gaps`: the time since each one's
        request had its previous one."""
        with self._lock:
            self.steps += 1
            self.generated_tokens += count
            for g in gaps:
                self.itl.observe(g)

    def admitted(self, prompt_tokens: int) -> None:
        with self._lock:
            self.prompt_tokens += prompt_tokens

    def done(self, reason: str) -> None:
        with self._lock:
            self.finished[reason] = self.finished.get(reason, 0) + 1

    def reject(self, why: str) -> None:
        with self._lock:
            self.rejected[why] = self.rejected.get(why, 0) + 1

    def render(self) -> str:
        g = self._gauges()
        with self._lock:
            parts = [
                _metric("disco_requests_running", "gauge", "requests in the running batch",
                        [f"disco_requests_running {g['running']}"]),
                _metric("disco_requests_waiting", "gauge", "requests queued for KV pages",
                        [f"disco_requests_waiting {g['waiting']}"]),
                _metric("disco_kv_pages_used", "gauge", "KV cache pages reserved by admitted requests",
                        [f"disco_kv_pages_used {g['pages_used']}"]),
                _metric("disco_kv_pages_total", "gauge", "KV cache pages of each worker",
                        [f"disco_kv_pages_total {g['pages_total']}"]),
                _metric("disco_healthy", "gauge", "1 while the engine serves, else 0",
                        [f"disco_healthy {int(g['healthy'])}"]),
                _metric("disco_generated_tokens_total", "counter", "tokens generated",
                        [f"disco_generated_tokens_total {self.generated_tokens}"]),
                _metric("disco_engine_steps_total", "counter", "engine steps (one forward of the running batch)",
                        [f"disco_engine_steps_total {self.steps}"]),
                _metric("disco_prompt_tokens_total", "counter", "prompt tokens of admitted requests",
                        [f"disco_prompt_tokens_total {self.prompt_tokens}"]),
                _metric("disco_requests_finished_total", "counter", "requests ended, by finish reason",
                        [f'disco_requests_finished_total{{reason="{k}"}} {v}'
                         for k, v in sorted(self.finished.items())]),
                _metric("disco_requests_rejected_total", "counter", "requests refused, by cause",
                        [f'disco_requests_rejected_total{{cause="{k}"}} {v}'
                         for k, v in sorted(self.rejected.items())]),
                _metric("disco_time_to_first_token_seconds", "histogram",
                        "from a request's arrival to its first token", self.ttft.lines(
                            "disco_time_to_first_token_seconds")),
                _metric("disco_inter_token_latency_seconds", "histogram",
                        "between consecutive tokens of a request", self.itl.lines(
                            "disco_inter_token_latency_seconds")),
            ]
        return "".join(parts)


def _metric(name: str, kind: str, help_text: str, samples: list[str]) -> str:
    return f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n" + "".join(s + "\n" for s in samples)
