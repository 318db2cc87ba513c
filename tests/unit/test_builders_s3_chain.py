"""Pods the operator builds when it has no S3 keys (issue 15): with
VOICETRACK_S3_SECRET_NAME empty, transcoder, promotion and live Jobs (and `files`
recorders) get no key variables and run under the `voicetrack-transcoder` ServiceAccount,
whose annotations (an IRSA role) give them the AWS chain's credentials; with a Secret name
they get the keys as before."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.test_operator_builders import OWNER, SPEC, chunk
from voicetrack.resources import TRANSCODER_SERVICE_ACCOUNT, SessionSpec
from voicetrack_operator.builders import PodSettings, build_recorder_pod
from voicetrack_operator.jobs import build_live_job, build_promote_job, build_transcode_job

pytestmark = pytest.mark.unit

KEYS = {"VOICETRACK_S3_ACCESS_KEY", "VOICETRACK_S3_SECRET_KEY"}


def jobs(settings: PodSettings) -> list[dict[str, Any]]:
    return [build_transcode_job(OWNER, chunk(0, 0, 10_000), SPEC, settings),
            build_promote_job(OWNER, "recordings/g/m/promotion.json", SPEC, settings),
            build_live_job(OWNER, SPEC, "m" * 16, 3, settings)]


def env_of(manifest: dict[str, Any]) -> dict[str, Any]:
    pod = manifest["spec"]["template"]["spec"] if manifest["kind"] == "Job" else manifest["spec"]
    return {e["name"]: e for e in pod["containers"][0]["env"]}


def test_without_a_key_secret_jobs_get_no_keys_and_the_transcoder_account() -> None:
    settings = PodSettings(s3_secret="")
    for job in jobs(settings):
        env = env_of(job)
        assert not KEYS & env.keys(), job["metadata"]["name"]
        assert env["VOICETRACK_S3_ENDPOINT"]["value"] == settings.s3_endpoint
        assert job["spec"]["template"]["spec"]["serviceAccountName"] == \
            TRANSCODER_SERVICE_ACCOUNT
    files = SessionSpec.model_validate({
        "guildId": SPEC.guild_id, "channelId": SPEC.channel_id,
        "source": {"type": "files", "speakers": [
            {"userId": "111111111111111111", "objectKey": "inputs/a.wav"}]}})
    assert not KEYS & env_of(build_recorder_pod(OWNER, files, "m" * 16, 0, settings)).keys()


def test_with_a_key_secret_jobs_read_it() -> None:
    for job in jobs(PodSettings(s3_secret="s3keys")):
        env = env_of(job)
        assert env["VOICETRACK_S3_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {
            "name": "s3keys", "key": "accessKey"}
        assert env["VOICETRACK_S3_SECRET_KEY"]["valueFrom"]["secretKeyRef"] == {
            "name": "s3keys", "key": "secretKey"}
