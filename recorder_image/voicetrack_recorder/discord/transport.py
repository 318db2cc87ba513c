"""Transport decryption of Discord voice packets (the `*_rtpsize` AEAD modes).

Source: Discord developer docs, "Voice Connections: Transport Encryption Modes". In both
modes the packet is `RTP header | ciphertext (+16-byte tag) | 4-byte nonce suffix`. The
additional authenticated data is the RTP header up to and including the 4-byte extension
header (RFC 3550 §5.3.1) but not the extension body, which is encrypted with the payload and
must be stripped from the front of the plaintext. The nonce is the 4-byte big-endian counter
from the end of the packet, zero-padded on the right to 12 bytes (`aead_aes256_gcm_rtpsize`,
AES-256-GCM) or 24 bytes (`aead_xchacha20_poly1305_rtpsize`, XChaCha20-Poly1305 IETF).
discord.py's `VoiceClient._encrypt_aead_xchacha20_poly1305_rtpsize` builds the same packets.
"""

from __future__ import annotations

from collections.abc import Callable

import nacl.bindings
import nacl.exceptions
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from voicetrack_recorder.discord.rtp import RtpHeader

MODE_AES256_GCM = "aead_aes256_gcm_rtpsize"
MODE_XCHACHA20 = "aead_xchacha20_poly1305_rtpsize"
SUPPORTED_MODES = (MODE_AES256_GCM, MODE_XCHACHA20)
"""The modes Discord offers today, in Discord's order of preference."""

NONCE_SUFFIX_BYTES = 4
TAG_BYTES = 16
KEY_BYTES = 32


class TransportError(ValueError):
    """A packet could not be transport-decrypted; `cause` is a short counter key
    (`short`, `auth`, `extension`, `mode`, `key`)."""

    def __init__(self, cause: str, message: str) -> None:
        super().__init__(message)
        self.cause = cause


class TransportDecryptor:
    """Decrypts the payload of RTP packets for one (mode, secret key) pair.

    `mode` is one of SUPPORTED_MODES; `secret_key` the 32 bytes from the voice gateway's
    SESSION_DESCRIPTION (op 4). Raises TransportError(`mode`/`key`) on construction when
    either is not usable.
    """

    def __init__(self, mode: str, secret_key: bytes) -> None:
        if mode not in SUPPORTED_MODES:
            raise TransportError("mode", f"transport mode {mode!r} is not one of {SUPPORTED_MODES}")
        if len(secret_key) != KEY_BYTES:
            raise TransportError("key", f"secret_key has {len(secret_key)} bytes, not 32")
        self.mode = mode
        self._open: Callable[[bytes, bytes, bytes], bytes]
        if mode == MODE_AES256_GCM:
            aes = AESGCM(secret_key)
            self._nonce_bytes = 12
            self._open = lambda nonce, ct, aad: aes.decrypt(nonce, ct, aad)
        else:
            key = bytes(secret_key)
            self._nonce_bytes = 24
            self._open = lambda nonce, ct, aad: (
                nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(ct, aad, nonce, key))

    def decrypt(self, packet: bytes, header: RtpHeader) -> bytes:
        """The Opus payload (extension body stripped) of `packet`, whose parsed header is
        `header`; RTP padding (P bit, count in the last byte) is removed too. Raises
        TransportError: `short` (no room for tag and nonce), `auth` (the tag does not
        verify: wrong key, forged or corrupted), `extension` (the extension body and
        padding are longer than the plaintext)."""
        aad_end = header.header_bytes
        if len(packet) < aad_end + TAG_BYTES + NONCE_SUFFIX_BYTES:
            raise TransportError("short", f"packet of {len(packet)} bytes has no room for "
                                          "the AEAD tag and the 4-byte nonce")
        nonce = packet[-NONCE_SUFFIX_BYTES:] + bytes(self._nonce_bytes - NONCE_SUFFIX_BYTES)
        try:
            plain = self._open(nonce, packet[aad_end:-NONCE_SUFFIX_BYTES], packet[:aad_end])
        except (InvalidTag, nacl.exceptions.CryptoError):
            raise TransportError("auth", f"{self.mode} tag does not verify") from None
        skip = 4 * header.extension_words
        pad = plain[-1] if header.padding and plain else 0  # RFC 3550 §5.1: P bit
        if skip + pad > len(plain):
            raise TransportError("extension", f"extension body of {skip} bytes and {pad} "
                                              f"padding bytes exceed the {len(plain)}-byte "
                                              "plaintext")
        return plain[skip:len(plain) - pad]
