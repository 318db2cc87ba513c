"""Certificates and keys of the local control plane (``cryptography``, ECDSA P-256).

Layout under ``<state>/pki/``: ``ca.crt``/``ca.key`` (the cluster CA, also the client CA and
the kubelet CA), ``apiserver.crt``/``.key`` (serving; SANs 127.0.0.1, localhost,
kubernetes.default[.svc[.cluster.local]], 10.96.0.1), client certs ``admin``
(O=system:masters), ``controller-manager`` (CN=system:kube-controller-manager),
``scheduler`` (CN=system:kube-scheduler), ``apiserver-kubelet-client`` (O=system:masters,
used by the apiserver to call the node agent), ``kubelet`` (the node agent's serving cert,
SAN 127.0.0.1), and ``sa.key``/``sa.pub`` (service-account token signing pair).
Subjects follow kubeadm's conventions (kubernetes.io/docs/setup/best-practices/certificates).
Everything is generated once per state directory and reused.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/16"
KUBERNETES_SERVICE_IP = "10.96.0.1"
_VALIDITY = dt.timedelta(days=3650)


@dataclass(frozen=True)
class CertPair:
    """Paths of one certificate and its private key (PEM)."""

    crt: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    """Every file of the cluster's PKI (see module docstring)."""

    dir: Path
    ca: CertPair
    apiserver: CertPair
    admin: CertPair
    controller_manager: CertPair
    scheduler: CertPair
    apiserver_kubelet_client: CertPair
    kubelet: CertPair
    sa_key: Path
    sa_pub: Path



def _builder(subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey,
             now: dt.datetime, *, ca: bool) -> x509.CertificateBuilder:
    """What every certificate here shares: validity from `now`, basic constraints, and
    the key usage of a CA (cert and CRL signing) or of a leaf (digital signature only)."""
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=False,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )

def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _issue(
    pair: CertPair,
    subject: x509.Name,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    *,
    server: bool = False,
    client: bool = False,
    sans: list[x509.GeneralName] | None = None,
) -> None:
    key = _new_key()
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + (
        [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
    )
    builder = (
        _builder(subject, ca_cert.subject, key.public_key(), now, ca=False)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    _write_key(pair.key, key)
    pair.crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def issue_server_cert(state_dir: Path, name: str, common_name: str,
                      hosts: list[str] | None = None) -> CertPair:
    """A serving certificate `state_dir/pki/<name>.crt|.key` issued once by the harness CA
    (made by `ensure_pki` if missing) for `hosts` (IP addresses or DNS names; default
    127.0.0.1 and localhost). Existing files are kept, so clients keep trusting them."""
    ca = ensure_pki(state_dir)
    pair = CertPair(ca.dir / f"{name}.crt", ca.dir / f"{name}.key")
    if pair.crt.exists() and pair.key.exists():
        return pair
    sans: list[x509.GeneralName] = []
    for host in hosts or ["127.0.0.1", "localhost"]:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    ca_cert = x509.load_pem_x509_certificate(ca.ca.crt.read_bytes())
    ca_key = serialization.load_pem_private_key(ca.ca.key.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    _issue(pair, _name(common_name), ca_cert, ca_key, server=True, sans=sans)
    return pair


def ensure_pki(state_dir: Path) -> Pki:
    """Create (once) and return the PKI under ``state_dir/pki``.

    Files that already exist are kept, so restarting a cluster keeps its identity and
    every kubeconfig stays valid.
    """
    d = state_dir / "pki"
    d.mkdir(parents=True, exist_ok=True)
    d.chmod(0o700)

    def pair(n: str) -> CertPair:
        return CertPair(d / f"{n}.crt", d / f"{n}.key")

    pki = Pki(
        dir=d,
        ca=pair("ca"),
        apiserver=pair("apiserver"),
        admin=pair("admin"),
        controller_manager=pair("controller-manager"),
        scheduler=pair("scheduler"),
        apiserver_kubelet_client=pair("apiserver-kubelet-client"),
        kubelet=pair("kubelet"),
        sa_key=d / "sa.key",
        sa_pub=d / "sa.pub",
    )
    if not (pki.ca.crt.exists() and pki.ca.key.exists()):
        ca_key = _new_key()
        now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
        subject = _name("voicetrack-local-ca")
        ca_cert = (
            _builder(subject, subject, ca_key.public_key(), now, ca=True)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )
        _write_key(pki.ca.key, ca_key)
        pki.ca.crt.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    ca_cert = x509.load_pem_x509_certificate(pki.ca.crt.read_bytes())
    loaded = serialization.load_pem_private_key(pki.ca.key.read_bytes(), password=None)
    assert isinstance(loaded, ec.EllipticCurvePrivateKey)
    ca_key = loaded

    loopback: list[x509.GeneralName] = [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.DNSName("localhost"),
    ]
    wanted: list[tuple[CertPair, x509.Name, dict[str, object]]] = [
        (
            pki.apiserver,
            _name("kube-apiserver"),
            {
                "server": True,
                "sans": [
                    *loopback,
                    x509.IPAddress(ipaddress.ip_address(KUBERNETES_SERVICE_IP)),
                    *(
                        x509.DNSName(n)
                        for n in (
                            "kubernetes",
                            "kubernetes.default",
                            "kubernetes.default.svc",
                            "kubernetes.default.svc.cluster.local",
                        )
                    ),
                ],
            },
        ),
        (pki.admin, _name("voicetrack-admin", "system:masters"), {"client": True}),
        (pki.controller_manager, _name("system:kube-controller-manager"), {"client": True}),
        (pki.scheduler, _name("system:kube-scheduler"), {"client": True}),
        (
            pki.apiserver_kubelet_client,
            _name("kube-apiserver-kubelet-client", "system:masters"),
            {"client": True},
        ),
        (pki.kubelet, _name("voicetrack-node-agent"), {"server": True, "sans": loopback}),
    ]
    for cp, subject, opts in wanted:
        if not (cp.crt.exists() and cp.key.exists()):
            _issue(cp, subject, ca_cert, ca_key, **opts)  # type: ignore[arg-type]
    if not (pki.sa_key.exists() and pki.sa_pub.exists()):
        sa = _new_key()
        _write_key(pki.sa_key, sa)
        pki.sa_pub.write_bytes(
            sa.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
    return pki
