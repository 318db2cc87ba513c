"""Discord's voice transport encryption, both directions, for the media relay.

Discord developer docs, "Topics › Voice Connections › Transport Encryption Modes" and
"Encrypting and Sending Voice": the `*_rtpsize` modes authenticate the RTP header as
additional data — the 12-byte fixed header, any CSRCs, and the 4-byte extension header
(profile, length) when the X bit is set — and encrypt everything after it (the extension
body and the payload). The nonce is a 32-bit big-endian counter appended to the packet and
zero-padded to 12 bytes (AES-256-GCM) or 24 bytes (XChaCha20-Poly1305). Keys are 32 bytes.
"""

from __future__ import annotations

import struct

import nacl.bindings
import nacl.exceptions
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

AES_GCM = "aead_aes256_gcm_rtpsize"
XCHACHA = "aead_xchacha20_poly1305_rtpsize"
MODES = (AES_GCM, XCHACHA)
"""What op 2 READY offers, preferred first (docs: AES-GCM preferred when available)."""


class TransportError(ValueError):
    """A datagram that is not a decryptable RTP packet of the given mode and key."""


def header_length(packet: bytes) -> int:
    """Length of the authenticated header: 12 + 4·CC, plus 4 if the X bit is set."""
    if len(packet) < 12 or packet[0] >> 6 != 2:
        raise TransportError("not RTP version 2")
    length = 12 + 4 * (packet[0] & 0x0F)
    if packet[0] & 0x10:
        length += 4
    if len(packet) < length + 4 + 16:
        raise TransportError("datagram too short")
    return length


def decrypt(mode: str, key: bytes, packet: bytes) -> tuple[bytes, bytes]:
    """`(header, plaintext)` of one sealed datagram `header | ciphertext+tag | nonce(4)`."""
    hlen = header_length(packet)
    header, sealed, suffix = packet[:hlen], packet[hlen:-4], packet[-4:]
    try:
        if mode == AES_GCM:
            return header, AESGCM(key).decrypt(suffix + bytes(8), sealed, header)
        if mode == XCHACHA:
            return header, nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
                sealed, header, suffix + bytes(20), key)
    except (InvalidTag, nacl.exceptions.CryptoError) as exc:
        raise TransportError("authentication failed") from exc
    raise TransportError(f"unknown mode {mode!r}")


def encrypt(mode: str, key: bytes, header: bytes, plaintext: bytes, nonce: int) -> bytes:
    """Seal `plaintext` under `header` with the 32-bit counter `nonce`."""
    suffix = struct.pack(">I", nonce & 0xFFFF_FFFF)
    if mode == AES_GCM:
        sealed = AESGCM(key).encrypt(suffix + bytes(8), plaintext, header)
    elif mode == XCHACHA:
        sealed = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
            plaintext, header, suffix + bytes(20), key)
    else:
        raise TransportError(f"unknown mode {mode!r}")
    return header + sealed + suffix
