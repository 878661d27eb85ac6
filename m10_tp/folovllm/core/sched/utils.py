"""Token-level stop conditions (stop strings are checked on text, by the detokenizer)."""

from __future__ import annotations

from folovllm.request import Request, RequestStatus


def check_stop(request: Request, max_model_len: int) -> RequestStatus | None:
    """The finished status the request's last token puts it in, or None to keep going."""
    params = request.sampling_params
    last = request.output_token_ids[-1]
    if not params.ignore_eos and last in request.eos_token_ids:
        return RequestStatus.FINISHED_STOPPED
    # len(), not the num_*_tokens properties: this runs for every token.
    num_output = len(request.output_token_ids)
    num_tokens = len(request.prompt_token_ids) + num_output
    if num_output >= params.max_tokens or num_tokens >= max_model_len:
        return RequestStatus.FINISHED_LENGTH
    return None
