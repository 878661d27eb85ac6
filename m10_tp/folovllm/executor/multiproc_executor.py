"""Tensor parallelism's processes: rank 0 is the engine's own process, ranks 1..N-1 are workers.

Every rank builds a ModelRunner over its shard of the model and joins one torch.distributed group
(NCCL on GPUs, gloo on a CPU) for the all-reduces inside the model. Rank 0 schedules; before each
step it sends the step to every worker through a pipe of its own (``StepMessage``: the scheduled
requests' new tokens, progress and block tables, pickled once per step), then runs its own share.
A pipe, not a collective, carries the step because a worker may wait for the next step forever
(an idle server) while collectives time out; a worker whose rank 0 is gone sees its pipe close.

A worker that dies takes the engine down with an error that names it: rank 0 checks the workers
before each step, and the first collective with a dead peer fails (gloo at once; NCCL is aborted
by the monitor thread). ``shutdown`` (also at exit) stops and joins every worker.
"""

from __future__ import annotations

import atexit
import logging
import os
import pickle
import socket
import threading
import traceback
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection, wait

import torch
import torch.multiprocessing as mp

from folovllm.config import ModelConfig
from folovllm.core.sched.output import SchedulerOutput
from folovllm.distributed.parallel_state import (
    destroy_distributed_environment,
    get_tp_group,
    init_distributed_environment,
)
from folovllm.request import Request
from folovllm.sampling_params import SamplingParams
from folovllm.worker.async_output import AsyncModelRunnerOutput
from folovllm.worker.model_runner import ModelRunner, ModelRunnerOutput

logger = logging.getLogger(__name__)


def timeout_s() -> float:
    """How long one rank waits for another: ``FOLOVLLM_TP_TIMEOUT_S``, 300 s by default."""
    return float(os.environ.get("FOLOVLLM_TP_TIMEOUT_S", "300"))


@dataclass
class StepMessage:
    """One step for the workers: only what changed since the step before."""

    # (request id, prompt length for a request new to the workers else -1, token ids the workers
    # have not seen, num_computed_tokens)
    reqs: list[tuple[str, int, list[int], int]]
    num_scheduled_tokens: dict[str, int]
    block_tables: dict[str, list[int]]
    finished_req_ids: set[str]
    preempted_req_ids: set[str]


class TensorParallelWorkerError(RuntimeError):
    """A worker process died or failed; the engine cannot run steps any more."""


def _device_of(model_config: ModelConfig, rank: int) -> torch.device:
    d = model_config.device
    return torch.device("cuda", (d.index or 0) + rank) if d.type == "cuda" else d


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MultiprocExecutor:
    """Rank 0's runner plus the worker processes; runs steps with a ModelRunner's interface."""

    def __init__(self, model_config: ModelConfig, runner_kwargs: dict, world_size: int) -> None:
        if get_tp_group() is not None:  # one process group per process
            raise RuntimeError(
                "a tensor-parallel engine already runs in this process: shut it down first"
            )
        self.world_size, self.closed, self.joined = world_size, False, False
        self.num_threads = torch.get_num_threads()  # given back at shutdown
        self.sent: dict[str, int] = {}  # request id -> how many of its tokens the workers have
        init_method = f"tcp://127.0.0.1:{_free_port()}"
        ctx = mp.get_context("spawn")  # a fresh interpreter: no CUDA state inherited by fork
        self.procs: list[mp.Process] = []
        self.conns: list[Connection] = []
        for rank in range(1, world_size):
            conn, child = ctx.Pipe()
            config = replace(model_config, device=_device_of(model_config, rank))
            args = (rank, world_size, init_method, config, runner_kwargs, child)
            proc = ctx.Process(
                target=worker_main, args=args, name=f"folovllm-tp{rank}", daemon=True
            )
            proc.start()
            child.close()
            self.procs.append(proc)
            self.conns.append(conn)
        atexit.register(self.shutdown)
        if model_config.device.type == "cpu":  # as each worker: a share of the cores
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
        try:
            timeout = timeout_s()
            init_distributed_environment(world_size, 0, init_method, model_config.device, timeout)
            self.joined = True
            self.runner = ModelRunner(model_config, **runner_kwargs)
            for rank, conn in enumerate(self.conns, 1):  # each worker built its runner too
                msg = conn.recv() if conn.poll(timeout) else ("error", f"silent {timeout} s")
                if msg != "ready":
                    raise TensorParallelWorkerError(f"worker rank {rank} did not start: {msg[1]}")
        except Exception as exc:
            failure = self._failure(exc)
            self.shutdown()
            if failure is exc:
                raise
            raise failure from exc
        self.num_blocks, self.block_size = self.runner.num_blocks, self.runner.block_size
        self.device = self.runner.device
        threading.Thread(target=self._monitor, daemon=True, name="folovllm-tp-monitor").start()

    # -- steps ----------------------------------------------------------------------------------
    def execute_model(self, so: SchedulerOutput) -> ModelRunnerOutput:
        return self.execute_model_async(so).get()

    def execute_model_async(self, so: SchedulerOutput) -> AsyncModelRunnerOutput:
        """Send the step to every worker, then run rank 0's share (it samples)."""
        if self.closed:
            raise TensorParallelWorkerError("the tensor-parallel engine is shut down")
        try:
            self._check_workers()
            data = pickle.dumps(self._message(so), protocol=pickle.HIGHEST_PROTOCOL)
            for conn in self.conns:
                conn.send_bytes(data)
            return self.runner.execute_model_async(so)
        except Exception as exc:
            failure = self._failure(exc)
            self.shutdown(join_timeout_s=1.0)  # the ranks may be out of step: no more steps
            if failure is exc:
                raise
            raise failure from exc

    def _message(self, so: SchedulerOutput) -> StepMessage:
        reqs = []
        for r in so.scheduled:
            sent, p = self.sent.get(r.request_id), len(r.prompt_token_ids)
            if sent is None:  # new to the workers: its whole prompt and any output so far
                new_tokens = r.prompt_token_ids + r.output_token_ids
            else:
                p, new_tokens = -1, r.output_token_ids[sent - p :]
            reqs.append((r.request_id, p, new_tokens, r.num_computed_tokens))
            self.sent[r.request_id] = r.num_tokens
        for req_id in so.finished_req_ids:
            self.sent.pop(req_id, None)
        return StepMessage(
            reqs, so.num_scheduled_tokens, so.block_tables, so.finished_req_ids,
            so.preempted_req_ids,
        )  # fmt: skip

    # -- failures -------------------------------------------------------------------------------
    def _check_workers(self) -> None:
        dead = [(rank, p) for rank, p in enumerate(self.procs, 1) if not p.is_alive()]
        if dead:
            raise TensorParallelWorkerError(self._describe(dead))

    def _describe(self, dead: list[tuple[int, mp.Process]]) -> str:
        lines = [
            f"tensor-parallel worker rank {rank} (pid {p.pid}) died with exit code {p.exitcode}"
            for rank, p in dead
        ]
        for rank, _ in dead:  # a worker that failed in Python sent its traceback first
            conn = self.conns[rank - 1]
            try:
                while conn.poll(0):
                    msg = conn.recv()
                    if isinstance(msg, tuple) and msg[0] == "error":
                        lines.append(f"rank {rank}: {msg[1]}")
            except (EOFError, OSError):
                pass
        return "; ".join(lines) + ": the engine cannot continue (shut it down and start again)"

    def _failure(self, exc: Exception) -> Exception:
        """The error to raise for ``exc``: a clear one if a worker is gone, else ``exc``."""
        if isinstance(exc, TensorParallelWorkerError):
            return exc
        for p in self.procs:  # a collective failed: give a dying peer a moment to be reaped
            p.join(timeout=2.0)
        dead = [(rank, p) for rank, p in enumerate(self.procs, 1) if not p.is_alive()]
        return TensorParallelWorkerError(self._describe(dead)) if dead else exc

    def _monitor(self) -> None:
        """Watch the workers; with NCCL, abort the group when one dies so no rank waits forever
        on a collective (gloo fails such a collective by itself)."""
        wait([p.sentinel for p in self.procs])
        if self.closed:
            return
        logger.error("a tensor-parallel worker died; the engine stops")
        if self.device.type == "cuda":
            from torch.distributed.distributed_c10d import _abort_process_group

            _abort_process_group()

    def shutdown(self, join_timeout_s: float = 10.0) -> None:
        """Stop every worker and join it (killed after ``join_timeout_s``); idempotent."""
        if self.closed:
            return
        self.closed = True
        for conn in self.conns:
            try:
                conn.send_bytes(pickle.dumps(None))
            except OSError:
                pass  # that worker is gone already
        for p in self.procs:
            p.join(timeout=join_timeout_s)
            if p.is_alive():
                p.kill()
                p.join(timeout=5.0)
        for conn in self.conns:
            conn.close()
        if self.joined:
            destroy_distributed_environment()
        torch.set_num_threads(self.num_threads)
        atexit.unregister(self.shutdown)


def worker_main(
    rank: int,
    world_size: int,
    init_method: str,
    model_config: ModelConfig,
    runner_kwargs: dict,
    conn: Connection,
) -> None:
    """A worker's life: join the group, build the runner, run every step rank 0 sends."""
    try:
        if model_config.device.type == "cuda":
            torch.cuda.set_device(model_config.device)
        else:  # the CPU's cores are shared by every rank
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
        init_distributed_environment(
            world_size, rank, init_method, model_config.device, timeout_s()
        )
        runner = ModelRunner(model_config, **runner_kwargs)
        conn.send("ready")
        requests: dict[str, Request] = {}  # this rank's copy of each running request's tokens
        while (msg := pickle.loads(conn.recv_bytes())) is not None:
            runner.execute_model_async(_scheduler_output(msg, requests))
    except EOFError:
        pass  # rank 0 is gone: nothing left to serve
    except BaseException:
        try:
            conn.send(("error", traceback.format_exc(limit=4)))
        except OSError:
            pass
        raise
    finally:
        destroy_distributed_environment()


def _scheduler_output(msg: StepMessage, requests: dict[str, Request]) -> SchedulerOutput:
    """Rebuild rank 0's SchedulerOutput from a StepMessage and the requests seen so far."""
    scheduled = []
    for req_id, num_prompt, new_tokens, num_computed in msg.reqs:
        if num_prompt >= 0:
            req = requests[req_id] = Request(
                req_id, None, new_tokens[:num_prompt], SamplingParams()
            )
            new_tokens = new_tokens[num_prompt:]
        req = requests[req_id]
        req.output_token_ids += new_tokens
        req.num_tokens += len(new_tokens)
        req.num_computed_tokens = num_computed
        scheduled.append(req)
    for req_id in msg.finished_req_ids:
        requests.pop(req_id, None)
    return SchedulerOutput(
        scheduled, msg.num_scheduled_tokens, msg.block_tables, msg.finished_req_ids,
        msg.preempted_req_ids,
    )  # fmt: skip
