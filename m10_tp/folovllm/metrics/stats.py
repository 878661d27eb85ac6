"""Engine-level counters: per-step batch records and finished-request latencies."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

from folovllm.core.sched.output import SchedulerOutput
from folovllm.outputs import RequestMetrics
from folovllm.request import Request


@dataclass
class StepRecord:
    time: float
    num_reqs: int
    num_tokens: int
    num_prefill_reqs: int
    prefill_req_ids: list[str] = field(default_factory=list)
    decode_req_ids: list[str] = field(default_factory=list)
    kv_used_tokens: int = 0  # tokens whose K/V are stored
    kv_reserved_tokens: int = 0  # token slots held by running requests


@dataclass
class EngineStats:
    steps: list[StepRecord] = field(default_factory=list)
    finished: list[RequestMetrics] = field(default_factory=list)

    def record_step(self, so: SchedulerOutput, kv_usage: tuple[int, int] = (0, 0)) -> None:
        # Called before the step's tokens are counted as computed. A request still computing its
        # prompt is a prefill however few tokens it has (a 1-token prompt is one too).
        prefills, decodes = [], []
        for r in so.scheduled:  # one pass, len() not the property: this runs every step
            is_prefill = r.num_computed_tokens < len(r.prompt_token_ids)
            (prefills if is_prefill else decodes).append(r.request_id)
        self.steps.append(
            StepRecord(
                time.perf_counter(),
                len(so.scheduled),
                so.total_num_scheduled_tokens,
                len(prefills),
                prefills,
                decodes,
                *kv_usage,
            )
        )

    def kv_utilization(self) -> float:
        """Used / reserved KV token slots, summed over all steps (1.0 = no waste)."""
        reserved = sum(s.kv_reserved_tokens for s in self.steps)
        return sum(s.kv_used_tokens for s in self.steps) / reserved if reserved else float("nan")

    def record_finished(self, req: Request) -> None:
        self.finished.append(RequestMetrics.from_request(req))

    def summary(self) -> dict[str, float]:
        """Means and percentiles over finished requests (seconds, tokens)."""
        done = [m for m in self.finished if m.first_token_time is not None]
        if not done:
            return {}
        ttft = sorted(m.ttft for m in done)
        tpot = sorted(m.tpot for m in done if m.tpot is not None)
        e2e = sorted(m.e2e for m in done if m.e2e is not None)
        out = {
            "num_requests": len(done),
            "output_tokens": sum(m.num_output_tokens for m in done),
            "ttft_mean": statistics.fmean(ttft),
            "ttft_p50": percentile(ttft, 50),
            "ttft_p99": percentile(ttft, 99),
            "e2e_mean": statistics.fmean(e2e) if e2e else float("nan"),
        }
        itl = sorted(x for m in done for x in m.itl)
        if itl:
            out.update(itl_p50=percentile(itl, 50), itl_p99=percentile(itl, 99), itl_max=itl[-1])
        if tpot:
            out.update(
                tpot_mean=statistics.fmean(tpot),
                tpot_p50=percentile(tpot, 50),
                tpot_p99=percentile(tpot, 99),
            )
        if self.steps:
            out["num_steps"] = len(self.steps)
            out["mean_batch_size"] = statistics.fmean(s.num_reqs for s in self.steps)
            out["max_batch_size"] = max(s.num_reqs for s in self.steps)
            out["kv_utilization"] = self.kv_utilization()
        return out


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]
