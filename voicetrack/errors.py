"""One error family. Adapters translate client errors (ApiException, S3Error, DBAPIError)
into these where they are raised; the operator maps them once to kopf's two kinds."""

from __future__ import annotations


class VoicetrackError(Exception):
    """Base of every error Voicetrack raises on purpose."""


class InvalidInputError(VoicetrackError):
    """Bad input: retrying cannot help (kopf PermanentError; transcoder exit code 2)."""


class PreconditionFailed(InvalidInputError):
    """S3 refused a conditional request (HTTP 412 PreconditionFailed): the object no
    longer has the ETag the caller gave (If-Match, or a copy source's match ETag): another
    writer replaced it since that ETag was read."""


class ChunkInputError(InvalidInputError):
    """Bad input that is one chunk's: a raw object of chunk `index` is missing, empty, not
    the object its chunk verified (sha256) or not a valid raw track. A promotion failing on
    it names the chunk in its termination message (`voicetrack.termination
    .TerminationReport`), so the operator can leave that chunk out and promote the rest."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(message)
        self.index = index


class TemporaryFailure(VoicetrackError):
    """An infrastructure failure that may pass (kopf TemporaryError; Job retry).

    `delay` is the suggested wait in seconds before trying again."""

    def __init__(self, message: str, delay: float = 10.0) -> None:
        super().__init__(message)
        self.delay = delay


class ServiceUnavailable(TemporaryFailure):
    """A service the work depends on (S3) was unreachable, failed (5xx) or refused our
    credentials: the work itself is not at fault (transcoder exit code 75, never counted
    against a chunk). Other TemporaryFailures (an ffmpeg crash) may be the input's."""


class NamespaceTerminating(TemporaryFailure):
    """The API server refused a create because the namespace is being deleted (403 with a
    `NamespaceTerminating` status cause: the NamespaceLifecycle admission plugin). Retrying
    only ends when the namespace is gone; callers that have another place to put what
    they meant to create (the recorder: `chunk.json` in S3) stop retrying."""


class ApiAccessDenied(TemporaryFailure):
    """The API server refused the caller's credentials (401: a token whose ServiceAccount
    is gone, or expired) or RBAC denied the request (403 without the NamespaceTerminating
    cause). Retried like any TemporaryFailure (an admin fixes RBAC, a fresh RoleBinding
    propagates late); a caller with a deadline and another place for its work stops
    retrying (the recorder while stopping: its session's ServiceAccount, Role and
    RoleBinding are collected with the session, before its last flush)."""


class NotFoundError(InvalidInputError):
    """A named thing (object, row, resource) does not exist."""


class ConflictError(VoicetrackError):
    """The thing exists already, or changed since it was read (HTTP 409). Deterministic
    names make a create's 409 a success for its caller; a conditional write's 409 means
    another writer won."""
