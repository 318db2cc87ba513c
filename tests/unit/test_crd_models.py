"""The CRDs' openAPIV3Schema and the pydantic models say the same thing (issue 10).

Walks both CRDs (`voicetrack/crds/*.yaml`, spec; the chunk's status against ChunkStatus)
against the models' JSON schema, field by field and recursively: names (camelCase alias),
types, enums, required fields, defaults and every bound keyword. A CEL rule of the form
`self.matches('<re>')` counts as the field's pattern. Deliberate differences are listed once in
ALLOWED_DIFFERENCES with their reason. Then one test per rule of issue 11 item 6 on the model.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from voicetrack.chunkspec import ChunkSpec, ChunkStatus, ChunkTrack, Gap
from voicetrack.resources import LimitsSpec, SessionSpec, StorageSpec, check_session_name

pytestmark = pytest.mark.unit

CRD_DIR = Path(__file__).resolve().parents[2] / "voicetrack" / "crds"
KEYWORDS = ("minimum", "maximum", "minLength", "maxLength", "pattern", "minItems", "maxItems",
            "multipleOf")
ALLOWED_DIFFERENCES: dict[str, str] = {
    "RecordingChunk.status:transcodeStatus:default":
        "the model reads a missing status as `queued`; the CRD has no default, because the "
        "operator takes a status without transcodeStatus to mean a chunk it has not seen",
    "RecordingChunk.spec.tracks[]:phaseSamples:default":
        "the model reads a missing phase as 0; the CRD has no default, because the API "
        "server fills schema defaults into every object it serves, and an operator of "
        "before the field (extra=forbid) then refused every chunk (review rev-phase)",
}
"""`<kind>.<path>:<what>` → why the CRD and the model differ there on purpose."""


def crd_schema(name: str) -> dict[str, Any]:
    crd = yaml.safe_load((CRD_DIR / f"{name}.yaml").read_text())
    return dict(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """A JSON-schema node without `$ref` and without the `| None` of an optional field."""
    if "$ref" in node:
        node = {**defs[node["$ref"].rsplit("/", 1)[1]],
                **{k: v for k, v in node.items() if k != "$ref"}}
    if "anyOf" in node:
        kept = [n for n in node["anyOf"] if n.get("type") != "null"]
        assert len(kept) == 1, f"unexpected union {node['anyOf']}"
        node = {**_resolve(kept[0], defs), **{k: v for k, v in node.items() if k != "anyOf"}}
    return node


def _cel_pattern(crd: dict[str, Any]) -> str | None:
    for rule in crd.get("x-kubernetes-validations", []):
        m = re.fullmatch(r"self\.matches\('(.*)'\)", rule["rule"].strip())
        if m:
            return m.group(1)
    return None


def _default(model: type[BaseModel], field: str) -> Any:
    """The model field's default in API form; `{}` for a nested model, None when absent."""
    info = model.model_fields[field]
    if info.is_required():
        return None
    value = info.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return {}
    if value in (None, []):
        return None  # absent in the object is the same as the model's empty default
    return value.value if hasattr(value, "value") else value


def _sub_model(model: type[BaseModel] | None, alias: str) -> type[BaseModel] | None:
    """The model class of field `alias` of `model` (through `list[...]` and `| None`)."""
    if model is None:
        return None
    for info in model.model_fields.values():
        if info.alias == alias:
            for arg in _type_args(info.annotation):
                if isinstance(arg, type) and issubclass(arg, BaseModel):
                    return arg
    return None


def _type_args(tp: Any) -> list[Any]:
    args = [tp]
    for a in getattr(tp, "__args__", ()) or ():
        args += _type_args(a)
    return args


def compare(kind: str, path: str, crd: dict[str, Any], js: dict[str, Any],
            defs: dict[str, Any], model: type[BaseModel] | None) -> list[str]:
    """Every difference between a CRD schema node and the model's JSON-schema node;
    `model` is the class of an object node (its fields' defaults are compared)."""
    js = _resolve(js, defs)
    out: list[str] = []

    def differ(what: str, ours: Any, theirs: Any) -> None:
        if ours != theirs and f"{kind}.{path}:{what}" not in ALLOWED_DIFFERENCES:
            out.append(f"{kind}.{path}: {what} CRD={ours!r} model={theirs!r}")

    js_type = js.get("type", "object" if "properties" in js else None)
    if "enum" in js and js_type is None:
        js_type = "string"
    differ("type", crd.get("type"), js_type)
    differ("enum", crd.get("enum"), js.get("enum", [js["const"]] if "const" in js else None))
    for kw in KEYWORDS:
        differ(kw, crd.get(kw, _cel_pattern(crd) if kw == "pattern" else None), js.get(kw))
    if crd.get("type") == "array":
        out += compare(kind, f"{path}[]", crd["items"], js["items"], defs, model)
    if crd.get("type") == "object":
        props, jprops = crd.get("properties", {}), js.get("properties", {})
        for name in sorted(set(props) | set(jprops)):
            if name not in props or name not in jprops:
                differ(f"{name}:field", "present" if name in props else "absent",
                       "present" if name in jprops else "absent")
            else:
                out += compare(kind, f"{path}.{name}", props[name], jprops[name], defs,
                               _sub_model(model, name))
        differ("required", sorted(crd.get("required", [])), sorted(js.get("required", [])))
        if model is not None:
            for field, info in model.model_fields.items():
                alias = info.alias or field
                if alias in props:
                    differ(f"{alias}:default", props[alias].get("default"),
                           _default(model, field))
    return out


def walk(kind: str, path: str, crd: dict[str, Any], model: type[BaseModel]) -> list[str]:
    """Compare the CRD node `crd` with `model`, recursively."""
    top = model.model_json_schema(by_alias=True)
    return compare(kind, path, crd, top, top.get("$defs", {}), model)


@pytest.mark.parametrize(("kind", "crd_name", "part", "model"), [
    ("RecordingSession", "recordingsessions", "spec", SessionSpec),
    ("RecordingChunk", "recordingchunks", "spec", ChunkSpec),
    ("RecordingChunk", "recordingchunks", "status", ChunkStatus),
])
def test_crd_schema_matches_the_model(kind: str, crd_name: str, part: str,
                                      model: type[BaseModel]) -> None:
    crd = crd_schema(crd_name)["properties"][part]
    assert walk(kind, part, crd, model) == []


def test_the_walk_finds_a_difference() -> None:
    """The comparison is not vacuous: a changed bound, a dropped field, a changed default,
    a changed enum and a changed pattern in a nested item are each reported."""
    crd = crd_schema("recordingchunks")["properties"]["spec"]
    crd["properties"]["index"]["maximum"] = 5
    del crd["properties"]["tracks"]["items"]["properties"]["frames"]
    crd["properties"]["tracks"]["items"]["properties"]["channels"]["default"] = 1
    crd["properties"]["gap"]["properties"]["cause"]["enum"].pop()
    crd["properties"]["tracks"]["items"]["properties"]["key"]["pattern"] = "^.*$"
    found = "\n".join(walk("RecordingChunk", "spec", crd, ChunkSpec))
    for needle in ("spec.index: maximum", "spec.tracks[]: frames:field", "channels:default",
                   "spec.gap.cause: enum", "spec.tracks[].key: pattern"):
        assert needle in found, found


def test_session_crd_without_status_model_keeps_unknown_fields() -> None:
    """RecordingSession.status has no model yet (the operator builds it in status.py): it
    stays open; only `live` (the audio so far, issue 13) and `autoStop` (why the operator
    deleted it, `services.autostop`) are described. The chunk's status
    is ChunkStatus, checked above."""
    status = crd_schema("recordingsessions")["properties"]["status"]
    assert {k: v for k, v in status.items() if k != "properties"} == {
        "type": "object", "x-kubernetes-preserve-unknown-fields": True}
    assert list(status.get("properties", {})) == ["live", "autoStop"]


# ------------------------------------------------------------ issue 11 item 6, on the model

GUILD, USER, MEETING = "123456789012345678", "223456789012345678", "AbCdEfGhIjKlMnOp"
SHA = "ab" * 32


def chunk_doc(**changes: Any) -> dict[str, Any]:
    key = f"recordings/{GUILD}/{MEETING}/chunks/000007/{USER}.opus"
    doc: dict[str, Any] = {
        "sessionName": "standup", "meetingId": MEETING, "guildId": GUILD, "index": 7,
        "startMs": 70_000, "endMs": 80_000,
        "tracks": [{"userId": USER, "key": key, "frames": 1, "firstMs": 70_000,
                    "lastMs": 70_000, "bytes": 10, "sha256": SHA}]}
    for path, value in changes.items():
        *parents, leaf = path.split(".")
        node: Any = doc
        for p in parents:
            node = node[int(p)] if p.isdigit() else node[p]
        node[leaf] = value
    return doc


def test_good_chunk_and_session_pass() -> None:
    assert ChunkSpec.model_validate(chunk_doc()).index == 7
    assert ChunkSpec.model_validate(chunk_doc(**{
        "rawFormat": "pcm-s16le",
        "tracks.0.key": f"{GUILD}/{MEETING}/chunks/000007/{USER}.pcm"})).tracks
    spec = SessionSpec.model_validate({"guildId": GUILD, "channelId": USER,
                                       "storage": {"prefix": "", "bucket": "a.b-c"}})
    assert spec.storage.prefix == ""
    assert check_session_name("s" * 50) == "s" * 50


@pytest.mark.parametrize(("change", "field"), [
    ({"endMs": 70_000}, "endMs"),
    ({"endMs": 60_000}, "endMs"),
    ({"startMs": 70_010}, "startMs"),
    ({"endMs": 80_010}, "endMs"),
    ({"endMs": 604_800_020}, "endMs"),
    ({"index": 1_000_000}, "index"),
    ({"gap": {"startMs": 60_000, "endMs": 60_000, "cause": "paused"}}, "gap.endMs"),
    ({"gap": {"startMs": 60_010, "endMs": 70_000, "cause": "paused"}}, "gap.startMs"),
    ({"sessionName": "s" * 64}, "sessionName"),
    ({"sessionName": "Bad_Name"}, "sessionName"),
    ({"meetingId": "../../../etc/pass"}, "meetingId"),
    ({"guildId": "../1"}, "guildId"),
    ({"tracks.0.userId": "../x"}, "userId"),
    ({"tracks.0.key": f"../{GUILD}/{MEETING}/chunks/000007/{USER}.opus"}, "key"),
    ({"tracks.0.key": f"/r/{GUILD}/{MEETING}/chunks/000007/{USER}.opus"}, "key"),
    ({"tracks.0.key": f"r/{GUILD}/{MEETING}/chunks/7/{USER}.opus"}, "key"),
    ({"tracks.0.key": f"r/{GUILD}/{MEETING}/chunks/000008/{USER}.opus"}, "tracks[0].key"),
    ({"tracks.0.key": f"r/{GUILD}/{MEETING}/chunks/000007/{GUILD}.opus"}, "tracks[0].key"),
    ({"tracks.0.key": f"r/{GUILD}/{MEETING}/chunks/000007/{USER}.pcm"}, "tracks[0].key"),
    ({"tracks.0.key": f"r/9{GUILD}/{MEETING}/chunks/000007/{USER}.opus"}, "tracks[0].key"),
])
def test_bad_chunk_spec_is_refused_naming_the_field(change: dict[str, Any], field: str
                                                    ) -> None:
    with pytest.raises(ValidationError) as err:
        ChunkSpec.model_validate(chunk_doc(**change))
    assert field in str(err.value)


@pytest.mark.parametrize(("storage", "field"), [
    ({"prefix": "/abs"}, "prefix"),
    ({"prefix": "a/../b"}, "prefix"),
    ({"prefix": ".."}, "prefix"),
    ({"prefix": "a//b"}, "prefix"),
    ({"prefix": "a b"}, "prefix"),
    ({"prefix": "p" * 129}, "prefix"),
    ({"bucket": "ab"}, "bucket"),
    ({"bucket": "b" * 64}, "bucket"),
    ({"bucket": "Upper"}, "bucket"),
    ({"bucket": "-lead"}, "bucket"),
    ({"bucket": "trail."}, "bucket"),
    ({"bucket": "under_score"}, "bucket"),
    ({"bucket": "two..dots"}, "two adjacent dots"),
    ({"bucket": "192.168.5.4"}, "IP address"),
])
def test_bad_storage_is_refused_naming_the_field(storage: dict[str, str], field: str) -> None:
    with pytest.raises(ValidationError) as err:
        StorageSpec.model_validate(storage)
    assert field in str(err.value)


@pytest.mark.parametrize("limits", [{"maxDurationSeconds": 0}, {"maxDurationSeconds": -1},
                                    {"emptyChannelSeconds": -1},
                                    {"emptyChannelSeconds": 86_401},
                                    {"maxDurationSeconds": 604_801}, {"maxBytes": 0},
                                    {"maxBytes": -5}])
def test_bad_limits_are_refused(limits: dict[str, int]) -> None:
    with pytest.raises(ValidationError, match=next(iter(limits))):
        LimitsSpec.model_validate(limits)


def test_repeated_output_format_is_refused() -> None:
    """The CRD's `x-kubernetes-list-type: set` on output.formats."""
    with pytest.raises(ValidationError, match="must not repeat"):
        SessionSpec.model_validate({"guildId": GUILD, "channelId": USER,
                                    "output": {"formats": ["mp3", "mp3"]}})


def test_long_session_name_is_refused() -> None:
    with pytest.raises(ValueError, match=r"metadata\.name must be at most 50"):
        check_session_name("s" * 51)


def test_models_refuse_what_their_constructors_are_given() -> None:
    """Direct construction (the recorder's path) checks the same rules as parsing."""
    with pytest.raises(ValidationError, match=r"gap\.endMs"):
        Gap(start_ms=20, end_ms=20, cause="paused")
    with pytest.raises(ValidationError, match="key"):
        ChunkTrack(user_id=USER, key="../x.opus", frames=0, first_ms=0, last_ms=0, bytes=0,
                   sha256=SHA)


def test_phase_samples_has_no_schema_default() -> None:
    """Review rev-phase fault 1: with `default: 0` the API server filled `phaseSamples`
    into every track of every RecordingChunk it served once the CRD was applied, and an
    operator of before the field (its model forbids unknown fields) refused every chunk
    as unparsable, done ones included: their audio became chunk-failed silence. Failed
    before."""
    tracks = crd_schema("recordingchunks")["properties"]["spec"]["properties"]["tracks"]
    assert "default" not in tracks["items"]["properties"]["phaseSamples"]
