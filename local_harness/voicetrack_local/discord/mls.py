"""The voice server's side of DAVE's MLS: the external sender and the little parsing it needs.

Facts used (sources in brackets):

- The voice server is the MLS group's *external sender* [DAVE whitepaper, "External
  Sender"]: op 25 carries `ExternalSender { opaque signature_key<V>; Credential credential; }`
  [RFC 9420 §12.1.8.1], here a P-256 key and a basic credential (type 1).
- Adds and removes are external proposals: `MLSMessage(PublicMessage)` [RFC 9420 §6.2] with
  group id = the channel id as 8 bytes big-endian [DAVE whitepaper, "Group"], the target
  epoch, sender type `external` (2) index 0, signed with
  `SignWithLabel(key, "FramedContentTBS", FramedContentTBS)` [RFC 9420 §5.1.2, §6.1]
  (ciphersuite 2: ECDSA P-256 / SHA-256, DER signature).
- Op 28 from a client is `commit || welcome?` with no length prefix [DAVE whitepaper,
  opcode 28; discord.py 2.7.1 `received_binary_message`]: the server splits it by parsing
  the commit's `MLSMessage` [RFC 9420 §6, §12.4, §7.6 UpdatePath, §7.2 LeafNode].

Vectors are `opaque x<V>`: an MLS varint length then the bytes [RFC 9420 §2.1.2].
"""

from __future__ import annotations

import struct

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

MLS10 = 1
WIRE_PUBLIC_MESSAGE = 1
WIRE_PRIVATE_MESSAGE = 2
SENDER_MEMBER = 1
SENDER_EXTERNAL = 2
CONTENT_PROPOSAL = 2
CONTENT_COMMIT = 3
PROPOSAL_ADD = 1
PROPOSAL_REMOVE = 3
CREDENTIAL_BASIC = 1
CREDENTIAL_X509 = 2


def varint(n: int) -> bytes:
    """MLS variable-length integer (RFC 9420 §2.1.2): 1, 2 or 4 bytes."""
    if n < 1 << 6:
        return bytes([n])
    if n < 1 << 14:
        return struct.pack(">H", 0x4000 | n)
    if n < 1 << 30:
        return struct.pack(">I", 0x8000_0000 | n)
    raise ValueError("vector too long")


def vec(data: bytes) -> bytes:
    """An MLS `opaque x<V>`: varint length then the bytes."""
    return varint(len(data)) + data


class ExternalSender:
    """The voice server's MLS identity for one call (one voice channel's group)."""

    def __init__(self, channel_id: int) -> None:
        self.channel_id = channel_id
        self.key = ec.generate_private_key(ec.SECP256R1())
        public = self.key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        self.package = vec(public) + struct.pack(">H", CREDENTIAL_BASIC) + vec(b"voice-server")
        """The op 25 payload: `ExternalSender` (65-byte uncompressed P-256 point)."""

    def proposal(self, body: bytes, epoch: int) -> bytes:
        """An `MLSMessage(PublicMessage)` carrying the Proposal `body`, signed for `epoch`."""
        content = (vec(struct.pack(">Q", self.channel_id)) + struct.pack(">Q", epoch)
                   + bytes([SENDER_EXTERNAL]) + struct.pack(">I", 0) + vec(b"")
                   + bytes([CONTENT_PROPOSAL]) + body)
        wire = struct.pack(">HH", MLS10, WIRE_PUBLIC_MESSAGE)
        signature = self.key.sign(vec(b"MLS 1.0 FramedContentTBS") + vec(wire + content),
                                  ec.ECDSA(hashes.SHA256()))
        return wire + content + vec(signature)

    def add(self, key_package: bytes, epoch: int) -> bytes:
        """An external Add of the serialized `KeyPackage` (a client's op 26 payload)."""
        return self.proposal(struct.pack(">H", PROPOSAL_ADD) + key_package, epoch)

    def remove(self, leaf_index: int, epoch: int) -> bytes:
        """An external Remove of the member at `leaf_index`."""
        return self.proposal(struct.pack(">HI", PROPOSAL_REMOVE, leaf_index), epoch)


def proposals_payload(proposals: list[bytes], *, revoke: bool = False) -> bytes:
    """Op 27 payload: `[optype u8 (0 append, 1 revoke)] + opaque proposal_messages<V>`
    [DAVE whitepaper, opcode 27]."""
    return bytes([1 if revoke else 0]) + vec(b"".join(proposals))


class _Reader:
    """A cursor over TLS-presentation bytes (RFC 9420 §2.1)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError("truncated MLS message")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def uint(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def vlen(self) -> int:
        first = self.data[self.pos] if self.pos < len(self.data) else None
        if first is None:
            raise ValueError("truncated MLS varint")
        prefix = first >> 6
        if prefix == 3:
            raise ValueError("invalid MLS varint")
        size = 1 << prefix
        return self.uint(size) & ((1 << (8 * size - 2)) - 1)

    def opaque(self) -> bytes:
        return self.take(self.vlen())

    def skip_vec(self) -> None:
        self.take(self.vlen())


def _skip_credential(r: _Reader) -> None:
    kind = r.uint(2)
    if kind in (CREDENTIAL_BASIC, CREDENTIAL_X509):
        r.skip_vec()  # identity<V>, or certificates<V> (a vector of vectors: one length)
    else:
        raise ValueError(f"unknown credential type {kind}")


def _skip_leaf_node(r: _Reader) -> None:
    """LeafNode [RFC 9420 §7.2]."""
    r.skip_vec()  # encryption_key
    r.skip_vec()  # signature_key
    _skip_credential(r)
    for _ in range(5):  # capabilities: versions, cipher_suites, extensions, proposals, creds
        r.skip_vec()
    source = r.uint(1)
    if source == 1:  # key_package: Lifetime
        r.take(16)
    elif source == 3:  # commit: parent_hash
        r.skip_vec()
    r.skip_vec()  # extensions
    r.skip_vec()  # signature


def split_commit_welcome(data: bytes) -> tuple[bytes, bytes | None]:
    """Split an op 28 payload into the commit `MLSMessage` and the welcome (or None).

    Raises ValueError if the commit does not parse."""
    r = _Reader(data)
    if r.uint(2) != MLS10:
        raise ValueError("not an MLS 1.0 message")
    wire = r.uint(2)
    if wire == WIRE_PRIVATE_MESSAGE:  # group_id, epoch, type, aad, sender data, ciphertext
        r.skip_vec()
        r.take(9)
        for _ in range(3):
            r.skip_vec()
    elif wire == WIRE_PUBLIC_MESSAGE:
        r.skip_vec()  # group_id
        r.take(8)  # epoch
        sender_type = r.uint(1)
        if sender_type in (SENDER_MEMBER, SENDER_EXTERNAL):
            r.take(4)
        r.skip_vec()  # authenticated_data
        if r.uint(1) != CONTENT_COMMIT:
            raise ValueError("op 28 does not start with a commit")
        r.skip_vec()  # proposals<V>
        if r.uint(1):  # optional<UpdatePath>
            _skip_leaf_node(r)
            r.skip_vec()  # nodes<V>
        r.skip_vec()  # signature
        r.skip_vec()  # confirmation_tag
        if sender_type == SENDER_MEMBER:
            r.skip_vec()  # membership_tag
    else:
        raise ValueError(f"unexpected wire format {wire}")
    commit, rest = data[:r.pos], data[r.pos:]
    return commit, (rest or None)
