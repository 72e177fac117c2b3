"""Every exception dscbatch raises on purpose derives from :class:`DscbatchError`.

The CLI prints ``str(error)`` as one line and exits with ``error.exit_code``.
"""

from __future__ import annotations


class DscbatchError(Exception):
    """Raised when dscbatch refuses or fails an operation for a reason it can name."""

    exit_code = 1


class SettingsError(DscbatchError):
    """Raised when settings are malformed, unknown or unsafe (a bad URL, an unknown key, pickle allowed)."""

    exit_code = 2


class InvalidInputError(DscbatchError):
    """Raised when a job's input file has problems; ``problems`` holds the first ones as text lines."""

    exit_code = 2

    def __init__(self, problems: list[str], total: int, cancelled_job: str | None = None) -> None:
        self.problems = problems
        self.total = total
        lines = list(problems)
        if total > len(problems):
            lines.append(f"... and {total - len(problems)} more problems")
        outcome = ("the file was refused, nothing was submitted" if cancelled_job is None else
                   f"job {cancelled_job} was cancelled when the first was read, its shards and work folder removed, "
                   "no results file written (--validate-first checks the whole file before any shard runs)")
        lines.append(f"{total} problem{'s' if total != 1 else ''}{' found so far' if cancelled_job else ''}: "
                     f"{outcome} (--skip-invalid runs the valid lines and reports the others as errors)")
        super().__init__("\n".join(lines))


class ModelFilesError(DscbatchError):
    """Raised when a model's tokenizer or config files are missing or unreadable."""

    exit_code = 2


class RequestError(DscbatchError):
    """Raised when one request cannot be served; it becomes that item's error record, not a failed job."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")


class JobNotFoundError(DscbatchError):
    """Raised when a job id names no job in Redis."""

    exit_code = 2


class BrokerError(DscbatchError):
    """Raised when Redis cannot be reached or refuses the credentials."""


class EngineError(DscbatchError):
    """Raised when the vLLM engine cannot start or stops answering."""


class StorageError(DscbatchError):
    """Raised when a path or fsspec URL cannot be read or written (missing, unreachable, refused)."""

    exit_code = 2


class MissingDataError(StorageError):
    """Raised when stored data is not there or not whole (a missing file, a corrupt result part): unlike an outage,
    trying again will not bring it back."""


class JobRunningError(DscbatchError):
    """Raised when an operation meant for a finished job (``delete``) names one still running."""

    exit_code = 2


class InputFormatError(DscbatchError):
    """Raised when an input file is not in a shape dscbatch reads (not Parquet, a column of the wrong type)."""

    exit_code = 2


class SandboxError(DscbatchError):
    """Raised when generated code cannot be run sandboxed (bwrap missing or unusable): it is never run bare."""

    exit_code = 2


class ApiError(DscbatchError):
    """Raised when the Batch API refuses a request; the server answers ``status`` in OpenAI's error shape."""

    status = 400
    type = "invalid_request_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        self.message = message
        self.param = param
        self.code = code
        super().__init__(message)


class AuthenticationApiError(ApiError):
    """Raised when a request carries no API key, or one that is wrong or revoked."""

    status = 401
    type = "authentication_error"


class NotFoundApiError(ApiError):
    """Raised when a file or batch id names nothing this API key owns."""

    status = 404


class ConflictApiError(ApiError):
    """Raised when an object's state forbids the operation (cancelling a batch that has ended)."""

    status = 409


class PayloadTooLargeApiError(ApiError):
    """Raised when an upload is larger than the server's file limit (DSCBATCH_MAX_FILE_BYTES)."""

    status = 413


class ApiKeyError(DscbatchError):
    """Raised when an API key name is taken, unknown or malformed (``dscbatch api-key``)."""

    exit_code = 2


class SubmissionCancelledError(DscbatchError):
    """Raised when a job is cancelled or deleted while ``submit`` still reads its file: the submission stops."""

    def __init__(self, job_id: str, lines_read: int, shards_queued: int) -> None:
        self.job_id = job_id
        super().__init__(f"job {job_id} was cancelled while it was submitted: stopped after {lines_read} lines read "
                         f"and {shards_queued} shards queued")


class RenderTaskError(DscbatchError):
    """Raised by ``submit --render cluster`` when a render task failed for good: an error of dscbatch's own (a
    model without its tokenizer, an input a worker cannot read), or any error ``MAX_RENDER_ATTEMPTS`` times."""
