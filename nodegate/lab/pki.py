"""The lab API server's PKI: its own CA, a serving certificate, client certificates and tokens.

What a Kubespray cluster hands an operator (roles/kubernetes/client: `artifacts/admin.conf`):
an HTTPS server whose certificate is signed by the cluster's own CA and names the server's
address, and an admin user authenticated by a client certificate whose subject is
`CN=kubernetes-admin, O=system:masters` (kubeadm's admin.conf; Kubernetes takes the user name
from CN and the groups from O). Other sites use bearer tokens or an exec credential plugin
(client.authentication.k8s.io ExecCredential); all of them are written here, under DIR/pki.

Users the lab's API server knows (`users()`):
- `kubernetes-admin` (group system:masters): the client certificate, every permission;
- `nodegate-operator` (group system:masters): a bearer token, and the same token handed out
  by the exec credential plugin;
- `nodegate-restricted` (no admin group): a client certificate, with read access and node
  patches but no pods/eviction, no pods/exec and no Lease writes (see apiserver/auth.py).

Generated with the `cryptography` package (already a dependency of paramiko, named in
pyproject so it is not an accident). Keys are ECDSA P-256: cheap to generate on every
`lab up` and accepted by kubectl, Go's TLS stack and Python's ssl module. Existing material is
kept when a lab is brought up again in the same DIR, like its SSH keys.
"""
from __future__ import annotations

import datetime
import ipaddress
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

ADMIN_USER = "kubernetes-admin"
ADMIN_GROUP = "system:masters"
TOKEN_USER = "nodegate-operator"
RESTRICTED_USER = "nodegate-restricted"
VALIDITY_DAYS = 365
EXEC_API_VERSION = "client.authentication.k8s.io/v1beta1"  # kubectl 1.20 (Debian's) knows only v1beta1


@dataclass(frozen=True)
class Pki:
    """Paths of one lab's PKI under DIR/pki."""

    dir: Path

    @classmethod
    def of(cls, lab_dir: Path) -> "Pki":
        return cls(Path(lab_dir) / "pki")

    @property
    def ca_cert(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.dir / "apiserver.crt"

    @property
    def server_key(self) -> Path:
        return self.dir / "apiserver.key"

    def client_cert(self, user: str) -> Path:
        return self.dir / f"{user}.crt"

    def client_key(self, user: str) -> Path:
        return self.dir / f"{user}.key"

    @property
    def tokens(self) -> Path:
        return self.dir / "tokens.json"

    @property
    def exec_token(self) -> Path:
        return self.dir / "exec-token"

    @property
    def exec_plugin(self) -> Path:
        return self.dir / "exec-credential"


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(tmp, mode)
    tmp.replace(path)


def _new_key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def _name(common_name: str, organization: str | None = None):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    attrs = []
    if organization:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attrs)


def make_ca(cert_path: Path, key_path: Path, common_name: str = "kubernetes") -> None:
    """A self-signed CA (kubeadm names its cluster CA `kubernetes`)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    key = _new_key()
    now = datetime.datetime.now(datetime.timezone.utc)
    name = _name(common_name)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=10 * VALIDITY_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    key_path.parent.mkdir(parents=True, exist_ok=True)
    _write(key_path, _key_pem(key), 0o600)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _issue(ca_cert: Path, ca_key: Path, cert_path: Path, key_path: Path, *, common_name: str,
           organization: str | None = None, ips: tuple[str, ...] = (), dns: tuple[str, ...] = (),
           server: bool = False) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID

    issuer_cert = x509.load_pem_x509_certificate(ca_cert.read_bytes())
    issuer_key = serialization.load_pem_private_key(ca_key.read_bytes(), password=None)
    key = _new_key()
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(_name(common_name, organization))
               .issuer_name(issuer_cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=VALIDITY_DAYS))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=True, key_cert_sign=False,
                                            crl_sign=False, content_commitment=False, data_encipherment=False,
                                            key_agreement=False, encipher_only=False, decipher_only=False),
                              critical=True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                                     else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                              critical=False))
    if ips or dns:
        names = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(issuer_key, hashes.SHA256())
    _write(key_path, _key_pem(key), 0o600)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def write_pki(lab_dir: Path, api_address: str, admin_token: str, node_addresses: tuple[str, ...] = ()) -> Pki:
    """CA, serving certificate for api_address (and the control-plane NODE_ADDRESSES, which
    Kubespray puts in the apiserver's certSANs), the two client certificates, the token table and
    the exec credential plugin. The CA and client certificates are kept when present; the
    serving certificate is issued again when the addresses changed (a lab moved to another net)."""
    pki = Pki.of(lab_dir)
    pki.dir.mkdir(parents=True, exist_ok=True)
    pki.dir.chmod(0o700)
    if not (pki.ca_cert.exists() and pki.ca_key.exists()):
        make_ca(pki.ca_cert, pki.ca_key)
        for stale in pki.dir.glob("*.crt"):
            if stale != pki.ca_cert:
                stale.unlink()
    ips = tuple(dict.fromkeys((api_address, *node_addresses)))
    if not pki.server_cert.exists() or _server_addresses(pki.server_cert) != ips:
        _issue(pki.ca_cert, pki.ca_key, pki.server_cert, pki.server_key, common_name="kube-apiserver",
               ips=ips, dns=("kubernetes", "kubernetes.default", "kubernetes.default.svc",
                                        "kubernetes.default.svc.cluster.local"), server=True)
    for user, group in ((ADMIN_USER, ADMIN_GROUP), (RESTRICTED_USER, None)):
        if not pki.client_cert(user).exists():
            _issue(pki.ca_cert, pki.ca_key, pki.client_cert(user), pki.client_key(user),
                   common_name=user, organization=group)
    exec_token = pki.exec_token.read_text().strip() if pki.exec_token.exists() else secrets.token_hex(24)
    _write(pki.exec_token, (exec_token + "\n").encode(), 0o600)
    _write(pki.tokens, json.dumps({
        admin_token: {"user": TOKEN_USER, "groups": [ADMIN_GROUP]},
        exec_token: {"user": TOKEN_USER, "groups": [ADMIN_GROUP]},
    }, indent=1).encode(), 0o600)
    # The plugin prints what a cloud provider's credential helper prints: an ExecCredential with a
    # token on stdout. It reads the token from its own file, so the kubeconfig holds no secret.
    plugin = ("#!/bin/sh\n"
              "# ExecCredential helper of the nodegate lab (client-go's exec credential plugin protocol).\n"
              "set -e\n"
              f"token=$(cat '{pki.exec_token}')\n"
              f"printf '{{\"apiVersion\":\"{EXEC_API_VERSION}\",\"kind\":\"ExecCredential\","
              "\"status\":{\"token\":\"%s\"}}\\n' \"$token\"\n")
    _write(pki.exec_plugin, plugin.encode(), 0o700)
    return pki


def _server_addresses(cert_path: Path) -> tuple[str, ...]:
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound, OSError):
        return ()
    return tuple(str(ip) for ip in san.get_values_for_type(x509.IPAddress))


def read_tokens(lab_dir: Path) -> dict[str, dict]:
    """token -> {"user": …, "groups": […]} (the API server's static token file)."""
    try:
        return json.loads(Pki.of(lab_dir).tokens.read_text())
    except FileNotFoundError:
        return {}
