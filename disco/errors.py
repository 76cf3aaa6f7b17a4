"""Error types of the runtime. Every message says what was wrong, where, what was
expected and what was given."""


class DiscoError(RuntimeError):
    """Base class of every error raised by `disco`."""


class WorkerError(DiscoError):
    """A worker failed: its function raised, or the worker process died.

    `worker_id` names the worker; `remote_traceback` holds the worker's traceback
    text when the failure was an exception (None when the process died)."""

    def __init__(self, message: str, worker_id: int, remote_traceback: str | None = None):
        super().__init__(message)
        self.worker_id = worker_id
        self.remote_traceback = remote_traceback


class WorkerTimeoutError(WorkerError):
    """The controller waited longer than its deadline for a worker (Session timeout_s, or
    a call's timeout=); the message names each late worker and what it is running."""


class ProtocolError(DiscoError):
    """A message between controller and workers that does not decode (the channel codec,
    disco._native.ChannelError, is this), or a value the channel cannot carry."""


class SessionError(DiscoError):
    """Misuse of a session: a DRef from another session, a call after shutdown, ..."""


class CollectiveError(DiscoError):
    """A collective was called with bad arguments (dtype, shapes differing across workers)."""


class SignatureError(DiscoError, TypeError):
    """An argument does not match a compiled function's signature."""


class PlacementError(DiscoError, ValueError):
    """A placement that is malformed or does not fit its mesh or tensor (disco.placement)."""


class KVCacheError(DiscoError, ValueError):
    """Misuse of a paged KV cache (disco.kv_cache): an unknown or duplicate sequence, a
    layer out of range, arrays whose shape or dtype do not fit the cache or the step."""


class OutOfPagesError(KVCacheError):
    """begin_forward needs more pages than are free; nothing was changed.
    `pages_needed` and `pages_free` say how many (a scheduler can preempt and retry)."""

    pages_needed: int = 0
    pages_free: int = 0


class ExecutableError(DiscoError, ValueError):
    """A `.disco` executable file that is not one, or is damaged (disco.executable): the
    message names the file and the missing or malformed manifest entry."""


class CheckpointError(DiscoError, ValueError):
    """A checkpoint that cannot be read, or whose tensors do not fit what is asked of
    them; the message names the tensor and the file (disco.llm.checkpoint)."""


class TokenizerError(DiscoError, ValueError):
    """A tokenizer that cannot be loaded or used (disco.llm.tokenizer): a directory without
    tokenizer.json, a special token missing from the vocabulary, ids out of range."""


class ChatTemplateError(TokenizerError):
    """A chat was asked of a tokenizer without a chat template, or the template failed
    (its own raise_exception, a syntax error, a message it cannot render)."""


class SamplingError(DiscoError, ValueError):
    """Sampling settings or logits that cannot be sampled from (disco.llm.sampling)."""


class GenerationError(DiscoError, ValueError):
    """Generation settings that are out of range, or a finished sequence fed more tokens
    (disco.llm.generation)."""


class KernelError(DiscoError, ValueError):
    """A CPU kernel (disco.cpu_kernels) was called with operands it cannot use: a weight
    of the wrong dtype or row size for its format, k not a whole number of blocks, an
    output of the wrong shape, an id outside an embedding table."""
