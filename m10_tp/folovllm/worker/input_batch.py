"""The persistent batch: per-request state that survives between steps, and the step's inputs.

m3 rebuilt every step's tensors from Python lists (``torch.tensor(list)`` per field, block tables
re-padded). Here each running request owns a row of two host arrays that only grow: its token ids
(a step appends the tokens sampled since the last one) and its block table (a step appends the
block ids allocated since the last one). A step's inputs are then computed with numpy from those
rows into one pinned host buffer, and ONE host->device copy moves them into a device buffer with
the same layout. The device buffer never moves, so a CUDA graph can read its inputs from it.

Layout of both buffers (int32), sized for the largest step:
``input_ids[T] | positions[T] | slot_mapping[T] | query_start_loc[R + 1] | seq_lens[R] |
placeholder_dst[R] | placeholder_src[R] | block_table[R, W]``
with T = max tokens per step, R = max requests per step + 1 (a mixed-step graph always has one
padding request), W = max blocks per request.

m8 async scheduling: a request's newest token may still be on the GPU (sampled by the step in
flight). Its input id is then copied on the device from that step's sampled ids
(``placeholder_src``) into this step's ``input_ids`` (``placeholder_dst``). The host buffer is
double: step N+1 is filled while step N's copy may still be queued.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from folovllm.attention.backends.abstract import CommonAttentionMetadata
from folovllm.core.sched.output import SchedulerOutput
from folovllm.request import Request


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


class InputBatch:
    def __init__(
        self,
        max_num_reqs: int,
        max_num_tokens: int,
        max_model_len: int,
        block_size: int,
        device: torch.device,
    ) -> None:
        self.max_num_reqs, self.block_size, self.device = max_num_reqs, block_size, device
        self.max_num_tokens = max(max_num_tokens, max_num_reqs)  # graph padding needs >= R
        self.max_blocks = cdiv(max_model_len, block_size)
        # Per-request rows (host only): the tokens and blocks the runner has seen so far.
        self.token_ids = np.zeros((max_num_reqs, max_model_len), dtype=np.int32)
        self.block_table = np.zeros((max_num_reqs, self.max_blocks), dtype=np.int32)
        # How much of each row is filled: Python ints, read and written per request per step
        # (a numpy scalar costs several times more).
        self.num_tokens, self.num_blocks = [0] * max_num_reqs, [0] * max_num_reqs
        self.req_to_row: dict[str, int] = {}
        self.free_rows = list(range(max_num_reqs - 1, -1, -1))
        # The staging buffer (pinned on CUDA, so the copy is asynchronous) and its device twin.
        t, r, w = self.max_num_tokens, max_num_reqs + 1, self.max_blocks
        sizes = {"input_ids": t, "positions": t, "slot_mapping": t}
        sizes.update(query_start_loc=r + 1, seq_lens=r, placeholder_dst=r, placeholder_src=r)
        sizes.update(block_table=r * w)
        self.offsets, total = {}, 0
        for name, n in sizes.items():
            self.offsets[name], total = (total, total + n), total + n
        pin = device.type == "cuda"
        self.hosts = [torch.zeros(total, dtype=torch.int32, pin_memory=pin) for _ in range(2)]
        self.copied: list[torch.cuda.Event | None] = [None, None]  # each host buffer's last copy
        self.host, self.buf = self.hosts[0], 0  # the host buffer of the last prepared step
        self.num_placeholders = 0  # in the last prepared step
        self.dev = torch.zeros(total, dtype=torch.int32, device=device)
        self.sample_idx = np.zeros(0, dtype=np.int64)  # m5: its requests that sample, batch order

    # -- rows -----------------------------------------------------------------------------------
    def remove(self, req_id: str) -> None:
        row = self.req_to_row.pop(req_id, None)
        if row is not None:
            self.free_rows.append(row)

    def _sync_row(self, req: Request, block_ids: list[int]) -> int:
        """Bring the request's row up to date: append new tokens and new block ids only."""
        row = self.req_to_row.get(req.request_id)
        if row is None:
            if not self.free_rows:
                raise RuntimeError(f"more than max_num_seqs={self.max_num_reqs} requests in a step")
            row = self.req_to_row[req.request_id] = self.free_rows.pop()
            self.num_tokens[row] = self.num_blocks[row] = 0
        have, want = self.num_tokens[row], req.num_tokens
        if want == have + 1 and have >= len(req.prompt_token_ids):  # the usual: one sampled token
            self.token_ids[row, have] = req.output_token_ids[-1]  # a scalar write: no slicing
            self.num_tokens[row] = want
        elif want > have:  # the whole prompt for a new row; several tokens after a prefill
            prompt = req.prompt_token_ids
            if have < len(prompt):
                self.token_ids[row, have : len(prompt)] = prompt[have:]
                have = len(prompt)
            if want > have:
                p = len(prompt)
                self.token_ids[row, have:want] = req.output_token_ids[have - p : want - p]
            self.num_tokens[row] = want
        have, want = self.num_blocks[row], len(block_ids)
        if want > have:
            self.block_table[row, have:want] = block_ids[have:]
            self.num_blocks[row] = want
        return row

    # -- one step -------------------------------------------------------------------------------
    def view(self, name: str, n: int | None = None) -> torch.Tensor:
        start, end = self.offsets[name]
        return self.dev[start : end if n is None else start + n]

    def device_block_table(self, num_reqs: int) -> torch.Tensor:
        return self.view("block_table", num_reqs * self.max_blocks).view(num_reqs, self.max_blocks)

    def prepare(
        self,
        so: SchedulerOutput,
        pad_to: int | None = None,
        pad_tokens_to: int | None = None,
        in_flight: dict[str, int] | None = None,
    ) -> tuple[CommonAttentionMetadata, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Fill the step's inputs; pad to ``pad_to`` requests of one token each (a decode graph),
        or to ``pad_tokens_to`` tokens and ``max_num_reqs + 1`` requests (a mixed-step graph:
        the padding tokens belong to the last request, of length 0; those between have none).
        ``in_flight``: request id -> its row in the sampled ids of the step still running
        (async); then call ``fill_placeholders`` with those ids before the forward.

        Returns (metadata, input_ids, positions, logits_indices) on the device.
        """
        reqs = so.scheduled
        rows = np.fromiter(
            (self._sync_row(r, so.block_tables[r.request_id]) for r in reqs), np.int64, len(reqs)
        )
        n = np.fromiter((so.num_scheduled_tokens[r.request_id] for r in reqs), np.int64, len(reqs))
        start = np.fromiter((r.num_computed_tokens for r in reqs), np.int64, len(reqs))
        step = step_arrays(rows, n, start, self.block_table, self.block_size)
        # m5: the requests whose tokens are all computed after this step sample one; the others
        # are mid-prompt (vLLM's discard mask, from these arrays: no loop over requests).
        row_tokens = np.array(self.num_tokens)[rows]  # tokens each request's row holds (host)
        self.sample_idx = np.flatnonzero(step.seq_lens >= row_tokens)
        padded_reqs, padded_tokens = self._padded_sizes(step, pad_to, pad_tokens_to)
        self._next_host()
        end = self._fill_host(step, padded_reqs, padded_tokens, mixed=pad_tokens_to is not None)
        self._stage_placeholders(step, row_tokens, reqs, in_flight)
        self.dev[:end].copy_(self.host[:end], non_blocking=True)  # the step's one copy
        if self.device.type == "cuda":
            self.copied[self.buf] = torch.cuda.Event()
            self.copied[self.buf].record()
        common = CommonAttentionMetadata(
            query_start_loc=self.view("query_start_loc", padded_reqs + 1),
            seq_lens=self.view("seq_lens", padded_reqs),
            block_table=self.device_block_table(padded_reqs),
            slot_mapping=self.view("slot_mapping", padded_tokens),
            query_start_loc_cpu=step.qsl.tolist(),
            seq_lens_cpu=step.seq_lens.tolist(),
            num_reqs=padded_reqs,
            num_actual_tokens=step.num_tokens,
            max_query_len=int(n.max()),
            max_seq_len=int(step.seq_lens.max()),
        )
        logits_indices = self.view("query_start_loc")[1 : len(reqs) + 1] - 1
        return (
            common,
            self.view("input_ids", padded_tokens),
            self.view("positions", padded_tokens),
            logits_indices,
        )

    def _next_host(self) -> None:
        """Switch staging buffers. Step N's copy out of this one was queued two steps ago: long
        done, but make sure."""
        self.buf ^= 1
        if (done := self.copied[self.buf]) is not None:
            done.synchronize()
        self.host = self.hosts[self.buf]

    def _stage_placeholders(
        self,
        step: SimpleNamespace,
        row_tokens: np.ndarray,
        reqs: list[Request],
        in_flight: dict[str, int] | None,
    ) -> None:
        """Input tokens whose ids are still on the GPU: where they go and where they come from."""
        ph = np.flatnonzero(step.positions >= row_tokens[step.req_of_token])
        self.num_placeholders = len(ph)
        if not len(ph):
            return
        if in_flight is None:
            raise RuntimeError("a step's input token is not known and no step is in flight")
        src = [in_flight[reqs[i].request_id] for i in step.req_of_token[ph].tolist()]  # ints
        h, o = self.host.numpy(), self.offsets
        h[o["placeholder_dst"][0] : o["placeholder_dst"][0] + len(ph)] = ph
        h[o["placeholder_src"][0] : o["placeholder_src"][0] + len(ph)] = src

    def fill_placeholders(self, sampled: torch.Tensor) -> None:
        """Copy the in-flight step's sampled ids into this step's inputs, on the device."""
        k = self.num_placeholders
        dst, src = self.view("placeholder_dst", k), self.view("placeholder_src", k)
        self.view("input_ids")[dst] = sampled[src].to(torch.int32)

    def _padded_sizes(
        self, step: SimpleNamespace, pad_to: int | None, pad_tokens_to: int | None
    ) -> tuple[int, int]:
        """(requests, tokens) after padding for the graph that will replay the step."""
        num_reqs = len(step.rows)
        padded_reqs = num_reqs if pad_to is None else pad_to
        padded_tokens = step.num_tokens + (padded_reqs - num_reqs)  # each padding request: 1 token
        if pad_tokens_to is not None:
            padded_reqs, padded_tokens = self.max_num_reqs + 1, pad_tokens_to
        if padded_tokens > self.max_num_tokens or padded_reqs > self.max_num_reqs + 1:
            raise RuntimeError("step larger than the input buffers")
        return padded_reqs, padded_tokens

    def _fill_host(
        self, step: SimpleNamespace, padded_reqs: int, padded_tokens: int, mixed: bool
    ) -> int:
        """Write the step into the staging buffer; return where the part to copy ends."""
        h, o = self.host.numpy(), self.offsets
        num_reqs, num_tokens = len(step.rows), step.num_tokens

        def put(name: str, values: np.ndarray, fill: int, length: int) -> None:
            s = o[name][0]
            h[s : s + len(values)] = values
            h[s + len(values) : s + length] = fill

        put("input_ids", self.token_ids[step.token_rows, step.positions], 0, padded_tokens)
        put("positions", step.positions, 0, padded_tokens)
        put("slot_mapping", step.slots, -1, padded_tokens)  # -1: the KV write skips padding
        s = o["query_start_loc"][0]
        h[s : s + num_reqs + 1] = step.qsl
        if not mixed:  # padding requests of one token each
            h[s + num_reqs + 1 : s + padded_reqs + 1] = np.arange(num_tokens + 1, padded_tokens + 1)
        else:  # empty padding requests, the last one holding the padding tokens
            h[s + num_reqs + 1 : s + padded_reqs] = num_tokens
            h[s + padded_reqs] = padded_tokens
        put("seq_lens", step.seq_lens, 0, padded_reqs)  # length 0: attention writes zeros
        w, s = self.max_blocks, o["block_table"][0]
        h[s : s + num_reqs * w] = self.block_table[step.rows].reshape(-1)
        if not mixed:
            h[s + num_reqs * w : s + padded_reqs * w] = 0
        # Everything up to the end of the block table rows the step uses (a mixed graph's padding
        # requests read no blocks: their rows may hold anything).
        return s + (num_reqs if mixed else padded_reqs) * w


def step_arrays(
    rows: np.ndarray, n: np.ndarray, start: np.ndarray, block_table: np.ndarray, block_size: int
) -> SimpleNamespace:
    """The step's per-token arrays, with numpy (no loop over tokens): ``n[i]`` new tokens of
    request ``i`` (row ``rows[i]``) after its ``start[i]`` computed ones."""
    qsl = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(n, out=qsl[1:])
    req_of_token = np.repeat(np.arange(len(rows)), n)
    positions = np.arange(qsl[-1]) - qsl[:-1][req_of_token] + start[req_of_token]
    token_rows = rows[req_of_token]
    block = block_table[token_rows, positions // block_size].astype(np.int64)
    slots = block * block_size + positions % block_size
    return SimpleNamespace(
        rows=rows, qsl=qsl, num_tokens=int(qsl[-1]), seq_lens=start + n, positions=positions,
        token_rows=token_rows, slots=slots, req_of_token=req_of_token,
    )  # fmt: skip
