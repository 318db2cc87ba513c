"""`voicetrack uninstall-cleanup`: what `helm uninstall` must remove that no release object
and no session owns (the chart's pre-delete hook Job runs it in the operator image).

That is the `voicetrack-transcoder` ServiceAccount the operator creates once per namespace
for transcoder, promotion and live Jobs (`builders.build_recorder_rbac`: no token, no
Role). It is deleted in every namespace where no RecordingSession is left; where sessions
remain (another release's, or ones the uninstall strands), it is kept: their Jobs need it,
and the operator makes it again for the next session anyway. Per-session ServiceAccounts,
Roles, RoleBindings, Secrets, pods and Jobs are owned by their session and go with it.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from voicetrack.resources import GROUP, SESSION_PLURAL, TRANSCODER_SERVICE_ACCOUNT, VERSION

MANAGED = "app.kubernetes.io/managed-by=voicetrack"
"""The label selector of what the operator made (`resources.MANAGED_BY`)."""


def cleanup_transcoder_accounts(api: Any) -> tuple[list[str], list[str]]:
    """Delete `voicetrack-transcoder` (labelled managed-by voicetrack) in every namespace
    without a RecordingSession; returns `(deleted, kept)` as namespace names. A 404 (gone
    meanwhile) counts as deleted. Raises the client's ApiException for anything else
    (the hook Job then fails and `helm uninstall` says so)."""
    from kubernetes import client

    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    sessions: dict[str, Any] = custom.list_cluster_custom_object(  # type: ignore[assignment]
        GROUP, VERSION, SESSION_PLURAL)
    busy = {s["metadata"]["namespace"] for s in sessions["items"]}
    deleted: list[str] = []
    kept: list[str] = []
    accounts = core.list_service_account_for_all_namespaces(
        label_selector=MANAGED, field_selector=f"metadata.name={TRANSCODER_SERVICE_ACCOUNT}")
    for sa in accounts.items:
        ns = str(sa.metadata.namespace) if sa.metadata else ""
        if not ns:
            continue
        if ns in busy:
            kept.append(ns)
            continue
        try:
            core.delete_namespaced_service_account(TRANSCODER_SERVICE_ACCOUNT, ns)
        except client.ApiException as err:
            if err.status != 404:
                raise
        deleted.append(ns)
    return sorted(deleted), sorted(kept)


def uninstall_cleanup(
    kubeconfig: Annotated[str | None, typer.Option(
        help="Kubeconfig path (default: in-cluster).", envvar="KUBECONFIG")] = None,
) -> None:
    """Remove what the operator made outside any session's ownership (helm pre-delete
    hook): the `voicetrack-transcoder` ServiceAccount of every namespace without sessions."""
    from voicetrack.kubeclient import load_api_client

    deleted, kept = cleanup_transcoder_accounts(load_api_client(kubeconfig))
    for ns in deleted:
        typer.echo(f"deleted {ns}/{TRANSCODER_SERVICE_ACCOUNT}")
    for ns in kept:
        typer.echo(f"kept {ns}/{TRANSCODER_SERVICE_ACCOUNT}: RecordingSessions remain there")
