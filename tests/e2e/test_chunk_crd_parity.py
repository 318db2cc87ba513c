"""Every rule of the `ChunkSpec` model validators is the API server's too (a hostile
RecordingChunk, made by a namespace user with `create` or by a compromised recorder, that
the API server stores but the model refuses wedges the operator and the recorder on parse).

Real kube-apiserver v1.36 with the CRDs of `voicetrack/crds/` (`install_crds`), which
checks the CEL cost of the rules when the CRD is applied; no operator runs. For each case
the model's verdict and the API server's agree: a refusal is a 422 naming the rule.
Before the opt-out rule was added to the CRD, the opt-out cases were admitted (201).
"""

from __future__ import annotations

import copy
import json
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from kubernetes import client
from pydantic import ValidationError

from tests.e2e.test_crd_validation import GOOD_CHUNK, GUILD, MEETING, USER
from tests.fixtures.cluster import Kubectl
from voicetrack.chunkspec import ChunkSpec
from voicetrack.kubeclient import load_api_client
from voicetrack.resources import API_VERSION, CHUNK_KIND, CHUNK_PLURAL, GROUP, MAX_TRACKS, VERSION
from voicetrack_local.cluster import LocalCluster
from voicetrack_local.stack import install_crds

pytestmark = pytest.mark.e2e

CRD_FILE = Path(__file__).resolve().parents[2] / "voicetrack" / "crds" / "recordingchunks.yaml"
OTHER = "323456789012345678"
OPT_OUT_RULE = "spec.tracks: Invalid value: spec.tracks[] must hold no packet of a user"
KEY_RULE = "spec.tracks: Invalid value: spec.tracks[].key must end with"

@pytest.fixture(scope="module")
def api(cluster: LocalCluster, kubectl: Kubectl) -> Iterator[tuple[client.ApiClient, str]]:
    """The CRDs installed (the API server accepted their CEL cost), an admin client and one
    namespace for this module's objects."""
    install_crds(cluster.kubeconfig)
    ns = f"t-chunk-parity-{secrets.token_hex(3)}"
    kubectl("create", "namespace", ns)
    c = load_api_client(str(cluster.kubeconfig))
    yield c, ns
    c.close()
    kubectl("delete", "namespace", ns, "--wait=false", check=False)


def api_create(api: tuple[client.ApiClient, str], spec: dict[str, Any]) -> tuple[int, str]:
    """Create a RecordingChunk with `spec`: (HTTP status, the API server's message). An
    admitted object (201) must parse as the operator parses it (`ChunkSpec` on the spec as
    stored: defaulted, nulls pruned), and is deleted again."""
    c, ns = api
    name = f"x-{secrets.token_hex(4)}"
    body = {"apiVersion": API_VERSION, "kind": CHUNK_KIND,
            "metadata": {"name": name, "namespace": ns}, "spec": spec}
    objects = client.CustomObjectsApi(c)
    try:
        stored = cast(dict[str, Any], objects.create_namespaced_custom_object(
            GROUP, VERSION, ns, CHUNK_PLURAL, body))
    except client.ApiException as err:
        return int(err.status), str(json.loads(err.body or "{}").get("message"))
    objects.delete_namespaced_custom_object(GROUP, VERSION, ns, CHUNK_PLURAL, name)
    ChunkSpec.model_validate(stored["spec"])  # what the API server stores, the model reads
    return 201, ""


def key(user: str, index: int = 7, ext: str = "opus") -> str:
    return f"rec/{GUILD}/{MEETING}/chunks/{index:06d}/{user}.{ext}"


def track(user: str, *, frames: int = 1, first: int = 70_000, last: int = 70_000,
          k: str | None = None) -> dict[str, Any]:
    return {"userId": user, "key": k or key(user), "frames": frames, "firstMs": first,
            "lastMs": last, "bytes": 10, "sha256": "ab" * 32}


def opt_out(user: str, since: int) -> dict[str, Any]:
    return {"userId": user, "sinceMs": since, "via": "user"}


def spec_with(**fields: Any) -> dict[str, Any]:
    """GOOD_CHUNK with top-level `fields` replaced (None removes the field)."""
    spec = copy.deepcopy(GOOD_CHUNK)
    for name, value in fields.items():
        if value is None:
            spec.pop(name, None)
        else:
            spec[name] = value
    return spec


# (model error, API server message, spec): every rejection of ChunkSpec's and Gap's model
# validators, each with the rule of the CRD that says the same.
REFUSED: dict[str, tuple[str, str, dict[str, Any]]] = {
    "window-empty": ("endMs must be greater than startMs",
                     "spec.endMs must be greater than spec.startMs",
                     spec_with(endMs=70_000, gap=None)),
    "window-reversed": ("endMs must be greater than startMs",
                        "spec.endMs must be greater than spec.startMs",
                        spec_with(startMs=90_000, gap=None)),
    "gap-empty": ("gap.endMs must be greater than gap.startMs",
                  "spec.gap.endMs must be greater than spec.gap.startMs",
                  spec_with(gap={"startMs": 60_000, "endMs": 60_000, "cause": "paused"})),
    "key-other-index": (r"tracks\[0\]\.key must end with", KEY_RULE,
                        spec_with(tracks=[track(USER, k=key(USER, 8))])),
    "key-other-user": (r"tracks\[0\]\.key must end with", KEY_RULE,
                       spec_with(tracks=[track(USER, k=key(OTHER))])),
    "key-other-format": (r"tracks\[0\]\.key must end with", KEY_RULE,
                         spec_with(tracks=[track(USER, k=key(USER, ext="pcm"))])),
    "key-other-guild": (r"tracks\[0\]\.key must end with", KEY_RULE, spec_with(
        tracks=[track(USER, k=key(USER).replace(GUILD, "923456789012345678"))])),
    "key-other-meeting": (r"tracks\[0\]\.key must end with", KEY_RULE, spec_with(
        tracks=[track(USER, k=key(USER).replace(MEETING, "ZZZZZZZZZZZZZZZZ"))])),
    "key-glued-prefix": (r"tracks\[0\]\.key must end with", KEY_RULE, spec_with(
        tracks=[track(USER, k="rec/9" + key(USER).removeprefix("rec/"))])),
    "opted-out-twice": ("optedOut must list each user once",
                        "spec.optedOut[1]: Duplicate value",
                        spec_with(optedOut=[opt_out(OTHER, 0), opt_out(OTHER, 20)])),
    "packet-at-opt-out": (r"tracks\[0\] has packets of user", OPT_OUT_RULE,
                          spec_with(optedOut=[opt_out(USER, 70_000)])),
    "packet-after-opt-out": (r"tracks\[1\] has packets of user", OPT_OUT_RULE, spec_with(
        tracks=[track(OTHER, last=79_980), track(USER, first=70_000, last=75_000)],
        optedOut=[opt_out(OTHER, 79_990), opt_out(USER, 72_000)])),
    "pcm-packet-after-opt-out": (r"tracks\[0\] has packets of user", OPT_OUT_RULE, spec_with(
        rawFormat="pcm-s16le", tracks=[track(USER, k=key(USER, ext="pcm"), last=79_980)],
        optedOut=[opt_out(USER, 0)])),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_what_the_model_refuses_the_api_server_refuses(
        api: tuple[client.ApiClient, str], case: str) -> None:
    model_error, api_message, spec = REFUSED[case]
    with pytest.raises(ValidationError, match=model_error):
        ChunkSpec.model_validate(spec)
    status, message = api_create(api, spec)
    assert status == 422 and api_message in message, (status, message)


ADMITTED: dict[str, dict[str, Any]] = {
    "opted-out-before-nothing": spec_with(optedOut=[opt_out(USER, 70_020)]),
    "opted-out-without-packets": spec_with(
        tracks=[track(USER, frames=0, last=79_980)], optedOut=[opt_out(USER, 0)]),
    "opted-out-without-track": spec_with(optedOut=[opt_out(OTHER, 0)]),
    "no-tracks-no-opt-outs-fields": spec_with(tracks=None, optedOut=None),
    "opt-outs-without-tracks-field": spec_with(tracks=None, optedOut=[opt_out(USER, 0)]),
    "tracks-without-opt-outs-field": spec_with(optedOut=None),
}


@pytest.mark.parametrize("case", sorted(ADMITTED))
def test_what_the_model_admits_the_api_server_admits(
        api: tuple[client.ApiClient, str], case: str) -> None:
    ChunkSpec.model_validate(ADMITTED[case])
    assert api_create(api, ADMITTED[case]) == (201, "")


def test_null_lists_are_pruned_and_the_stored_spec_parses(
        api: tuple[client.ApiClient, str]) -> None:
    """JSON nulls (which the model refuses for a list) are dropped by the API server before
    the rules run: the stored chunk has no `tracks` and `optedOut`, and parses."""
    assert api_create(api, {**spec_with(), "tracks": None, "optedOut": None}) == (201, "")


@pytest.mark.parametrize("frames", [0, 1])
@pytest.mark.parametrize("last_vs_since", [-20, 0, 20])
@pytest.mark.parametrize("same_user", [True, False])
def test_the_opt_out_rule_agrees_with_the_model_around_its_boundary(
        api: tuple[client.ApiClient, str], frames: int, last_vs_since: int,
        same_user: bool) -> None:
    spec = spec_with(tracks=[track(USER, frames=frames, last=75_000)], optedOut=[
        opt_out(USER if same_user else OTHER, 75_000 - last_vs_since)])
    try:
        ChunkSpec.model_validate(spec)
        model_admits = True
    except ValidationError:
        model_admits = False
    assert model_admits == (not (frames and same_user and last_vs_since >= 0))
    status, message = api_create(api, spec)
    assert (status == 201) == model_admits, (status, message)
    if not model_admits:
        assert status == 422 and OPT_OUT_RULE in message, message


def test_the_largest_chunk_stays_within_the_cel_cost_limit(
        api: tuple[client.ApiClient, str]) -> None:
    """128 tracks against 128 opt-outs, each compared with each (none matches, so no
    `exists` stops early): admitted at run time; one packet past an opt-out: refused."""
    users = [f"{10**17 + i}" for i in range(MAX_TRACKS)]
    others = [f"{2 * 10**17 + i}" for i in range(MAX_TRACKS)]
    spec = spec_with(tracks=[track(u, last=79_980) for u in users],
                     optedOut=[opt_out(u, 0) for u in others])
    ChunkSpec.model_validate(spec)
    assert api_create(api, spec) == (201, "")
    spec["optedOut"][-1] = opt_out(users[-1], 79_980)
    with pytest.raises(ValidationError, match=r"tracks\[127\] has packets"):
        ChunkSpec.model_validate(spec)
    status, message = api_create(api, spec)
    assert status == 422 and OPT_OUT_RULE in message, message


def test_the_served_crd_holds_the_file_s_rules(
        api: tuple[client.ApiClient, str], kubectl: Kubectl) -> None:
    """The CRD with its rules was accepted (CEL compiled, estimated cost within the
    limits) and is served as written: no rule was dropped on the way."""
    want = yaml.safe_load(CRD_FILE.read_text())["spec"]["versions"][0]["schema"]
    got = json.loads(kubectl("get", "crd", "recordingchunks.voicetrack.dev", "-o",
                             "json").stdout)["spec"]["versions"][0]["schema"]
    spec_rules = got["openAPIV3Schema"]["properties"]["spec"]["x-kubernetes-validations"]
    assert spec_rules == want["openAPIV3Schema"]["properties"]["spec"][
        "x-kubernetes-validations"]
    assert any("optedOut" in r["rule"] for r in spec_rules)


def test_a_chunk_stored_before_the_opt_out_rule_still_takes_status_and_deletion(
        api: tuple[client.ApiClient, str], cluster: LocalCluster, kubectl: Kubectl) -> None:
    """A violating chunk stored before the rule (an upgraded cluster) is not wedged by it:
    its spec is unchanged, so the API server's validation ratcheting lets the operator's
    status write (e.g. `failed` with `refused`), a label and its deletion through."""
    _, ns = api
    bad = spec_with(optedOut=[opt_out(USER, 70_000)])
    name = f"old-{secrets.token_hex(4)}"
    store_before_the_opt_out_rule(cluster, kubectl, {
        "apiVersion": API_VERSION, "kind": CHUNK_KIND,
        "metadata": {"name": name, "namespace": ns}, "spec": bad}, ns)
    assert api_create(api, bad)[0] == 422  # the rule is back
    obj = ["-n", ns, "recordingchunk", name]
    kubectl("patch", *obj, "--subresource=status", "--type=merge", "-p", json.dumps(
        {"status": {"transcodeStatus": "failed", "refused": "not parsable"}}))
    kubectl("label", *obj, "voicetrack.dev/refused=true")
    kubectl("delete", *obj)
    assert kubectl("get", *obj, check=False).returncode != 0


def store_before_the_opt_out_rule(cluster: LocalCluster, kubectl: Kubectl,
                                  doc: dict[str, Any], namespace: str) -> None:
    """Create RecordingChunk `doc` in `namespace` as a cluster upgraded from a CRD
    without the opt-out CEL rule holds it: the served CRD loses the rule, `doc` is
    created, the CRDs of `voicetrack/crds/` are applied again, and this returns once the
    rule refuses again (a chunk whose track has packets of its user after their opt-out)."""
    crd = "recordingchunks.voicetrack.dev"
    rules = "/spec/versions/0/schema/openAPIV3Schema/properties/spec/x-kubernetes-validations"
    served = json.loads(kubectl("get", "crd", crd, "-o", "json").stdout)
    index = next(i for i, r in enumerate(served["spec"]["versions"][0]["schema"][
        "openAPIV3Schema"]["properties"]["spec"]["x-kubernetes-validations"])
        if "optedOut" in r["rule"])
    kubectl("patch", "crd", crd, "--type=json", "-p",
            json.dumps([{"op": "remove", "path": f"{rules}/{index}"}]))
    try:
        wait_for("the CRD without the rule in effect", lambda: kubectl(
            "-n", namespace, "create", "-f", "-", input=json.dumps(doc),
            check=False).returncode == 0)
    finally:
        install_crds(cluster.kubeconfig)
    probe = {**doc, "metadata": {**doc["metadata"], "name": f"probe-{secrets.token_hex(4)}",
                                  "finalizers": []}}
    wait_for("the rule back in effect", lambda: kubectl(
        "-n", namespace, "create", "--dry-run=server", "-f", "-", input=json.dumps(probe),
        check=False).returncode != 0)


def wait_for(what: str, fn: Callable[[], bool], timeout_s: float = 30) -> None:
    """Poll `fn` until it is True (a changed CRD takes a moment to be served)."""
    deadline = time.monotonic() + timeout_s
    while not fn():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout_s} s")
        time.sleep(0.3)
