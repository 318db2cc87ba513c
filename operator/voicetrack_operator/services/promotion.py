"""The promotion Job of a session being deleted (the deletion's promote step,
`services.deletion`): run it, follow it, verify its outputs against its manifest.

In a namespace being deleted the API server refuses every create (403, "unable to create
new content in namespace … because it is being terminated") and the namespace controller
deletes the session's Jobs, chunks and Secrets. The Job then runs in the operator's
namespace (`OperatorSettings.operator_namespace`; `jobs.build_detached_promote_job`):
it reads only S3 (the plan, and the raw chunks, which the inventory rebuilds from their
`chunk.json` once the RecordingChunks are gone), and is deleted once its outputs are
verified.
"""

from __future__ import annotations

from voicetrack.errors import InvalidInputError, NotFoundError, TemporaryFailure
from voicetrack.manifests import FinalManifest, PromotionPlan
from voicetrack.names import controller_uid, promote_job_name
from voicetrack.resources import TranscodeStatus
from voicetrack_operator.adapters.objects import AsyncObjectStore
from voicetrack_operator.builders import build_recorder_rbac
from voicetrack_operator.context import Context
from voicetrack_operator.jobs import (
    build_detached_promote_job,
    build_promote_job,
    detached_promote_job_name,
)
from voicetrack_operator.services.chunkstate import job_state
from voicetrack_operator.services.failures import bad_chunk, failed_on_input, pods_detail
from voicetrack_operator.services.sessionview import SessionView

PROMOTION_RERUN_S = 10.0
"""A promotion Job that failed on infrastructure (its pods' retries ran out while S3 or a
node was away, issue 11 scenario 6) is deleted and the promote step tried again after this
many seconds: writing the plan to S3 fails (and is retried) until S3 answers, then the Job
runs anew. Its own pod retries (about 70 s of backoff) pace the attempts."""

DETACHED_SECRET_RETRY_S = 30.0
"""A promotion that must run in the operator's namespace (its session's is being deleted)
while the S3 Secret is missing there is tried again this often (seconds)."""

POLL_S = 2.0
"""How soon (seconds) a started or running promotion Job is looked at again."""


class PromotionFailed(InvalidInputError):
    """Promotion did not complete: the raw chunks are kept and the finalizer stays."""


class ChunkInputFailed(PromotionFailed):
    """The promotion Job failed on one chunk's raw input (exit 2, its termination message
    a `TerminationReport` naming chunk `index`): the deletion may leave that chunk out and
    promote the rest (`services.leftout`). The failed Job is `job` (namespace, name)."""

    def __init__(self, message: str, index: int, detail: str, job: tuple[str, str]
                 ) -> None:
        super().__init__(message)
        self.index = index
        self.detail = detail
        """The Job's own reason (its termination message's)."""
        self.job = job


async def run_promotion(ctx: Context, s: SessionView, plan: PromotionPlan
                        ) -> tuple[str, float] | None:
    """Start session `s`'s promotion Job for `plan` when there is none (the plan written
    to S3 first), follow it, and verify its outputs once it is done. Returns None when
    done and verified, else (what it waits for, seconds until the next look). Raises
    ChunkInputFailed when the Job failed on the raw input of the chunk its termination
    message names, PromotionFailed when it failed on any other input or its outputs do not
    match (the failed Job kept, as evidence), TemporaryFailure when it failed on
    infrastructure (deleted, to run again)."""
    store, layout = ctx.store(s.spec.storage.bucket), s.layout
    detached = await ctx.kube.namespace_terminating(s.ref.namespace)
    job_ns, job_name = ((ctx.settings.operator_namespace, detached_promote_job_name(s.ref.uid))
                        if detached else (s.ref.namespace, promote_job_name(s.ref.name)))
    job = await ctx.kube.get_job(job_ns, job_name)
    if job is None:
        await store.put_json(layout.promotion_plan_key, plan.to_api())
        if detached:
            await ensure_detached_job(ctx, s, layout.promotion_plan_key)
            return (f"namespace {s.ref.namespace} is being deleted: promotion started in "
                    f"{job_ns}", POLL_S)
        await ctx.kube.ensure(build_promote_job(
            s.ref, layout.promotion_plan_key, s.spec, ctx.settings.pods))
        return "promotion started", POLL_S
    if not detached and controller_uid(job) != s.ref.uid:
        return (f"Job {job_name} of an earlier session of this name is still being "
                "collected", POLL_S)
    if job["metadata"].get("deletionTimestamp"):
        return f"the failed promotion Job {job_name} is being deleted", PROMOTION_RERUN_S
    state, reason = job_state(job)
    if state is TranscodeStatus.FAILED:
        pods = await ctx.kube.job_pods(job_ns, job_name)
        detail = await pods_detail(ctx.kube, job_ns, pods)
        if not failed_on_input(job):  # S3 or a node was away: run it again soon
            await ctx.kube.delete_job(job_ns, job_name)
            raise TemporaryFailure(
                f"promotion Job {job_ns}/{job_name} failed: {reason}"
                f"{'; ' + detail if detail else ''}; raw chunks kept; running it again",
                delay=PROMOTION_RERUN_S)
        index = bad_chunk(pods)
        if index is not None:
            raise ChunkInputFailed(f"promotion Job {job_ns}/{job_name} failed on chunk "
                                   f"{index}'s raw input: {detail or reason}", index,
                                   detail or str(reason), (job_ns, job_name))
        raise PromotionFailed(f"promotion Job {job_ns}/{job_name} failed: {reason}"
                              f"{'; ' + detail if detail else ''}; raw chunks kept; "
                              f"delete Job {job_ns}/{job_name} to run it again")
    if state is not TranscodeStatus.DONE:
        return "promotion running", POLL_S
    await verify_outputs(store, await final_manifest(ctx, s))
    if detached:  # nothing owns it: collected here (or by its TTL)
        await ctx.kube.delete_job(job_ns, job_name)
    return None


async def ensure_detached_job(ctx: Context, s: SessionView, plan_key: str) -> None:
    """Create the promotion Job of session `s`, whose namespace is being deleted, in the
    operator's namespace (`jobs.build_detached_promote_job`), with the transcoder
    ServiceAccount it runs as. Raises TemporaryFailure while the S3 Secret its pod reads
    is missing there (the chart's release namespace holds it)."""
    ns, pods = ctx.settings.operator_namespace, ctx.settings.pods
    if pods.s3_secret and await ctx.kube.get_secret(ns, pods.s3_secret) is None:
        raise TemporaryFailure(
            f"namespace {s.ref.namespace} is being deleted, so its promotion runs in {ns}, "
            f"which has no Secret {pods.s3_secret} (accessKey, secretKey): create it there",
            delay=DETACHED_SECRET_RETRY_S)
    for manifest in build_recorder_rbac(ns):
        await ctx.kube.ensure(manifest)
    await ctx.kube.ensure(build_detached_promote_job(s.ref, plan_key, s.spec, pods, ns))


async def final_manifest(ctx: Context, s: SessionView) -> FinalManifest:
    """`final/manifest.json`. Raises PromotionFailed when missing or unusable."""
    try:
        return FinalManifest.model_validate(
            await ctx.store(s.spec.storage.bucket).get_json(s.layout.final_manifest_key))
    except (InvalidInputError, ValueError) as err:  # missing, not JSON, not a manifest
        raise PromotionFailed(f"final manifest unusable: {err}; raw chunks kept") from err


async def verify_outputs(store: AsyncObjectStore, manifest: FinalManifest) -> None:
    """Check every final object's size and sha256 against the manifest (streamed).
    Raises PromotionFailed naming the first mismatch."""
    for track in manifest.tracks:
        try:
            size, digest = await store.digest(track.key)
        except NotFoundError as err:
            raise PromotionFailed(f"{track.key} is missing; raw chunks kept") from err
        if size != track.bytes or digest != track.sha256:
            raise PromotionFailed(
                f"{track.key}: {size} bytes sha256 {digest[:12]}… but the manifest says "
                f"{track.bytes} bytes sha256 {track.sha256[:12]}…; raw chunks kept")
