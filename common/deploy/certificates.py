"""The consortium's keys and certificates, made with `cryptography` (no hand-rolled crypto).

- a CA (ECDSA P-384, self-signed): `ca.pem` goes to every site (`--root-certificates`);
  `ca.key` stays with whoever runs the consortium, offline;
- the SuperLink's TLS certificate for its host names and IP addresses (subjectAltName, as
  RFC 6125 requires; a name missing here makes the SuperNodes' TLS handshake fail):
  `superlink.pem` + `superlink.key` (secret, at the coordinating centre);
- one SuperNode authentication key pair per site (ECDSA P-384 in OpenSSH format, what
  `flower-supernode --auth-supernode-private-key` and `flwr supernode register` read in flwr 1.42):
  `sites/<name>/supernode` (secret, at the hospital) and `sites/<name>/supernode.pub` (sent to
  the coordinating centre, which registers it).

Private keys are written with mode 0600; every write is atomic.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.atomic_io import atomic_write_bytes
from common.config.option_values import is_folder_name
from common.errors import ConfigError

CURVE = ec.SECP384R1()  # a NIST curve: flwr 1.42 refuses others for SuperNode keys
PRIVATE = 0o600


@dataclass(frozen=True)
class ConsortiumFiles:
    """Where `make_consortium` wrote each file (see the module docstring for who keeps what)."""

    ca_certificate: Path
    ca_key: Path
    superlink_certificate: Path
    superlink_key: Path
    site_private_keys: dict[str, Path]
    site_public_keys: dict[str, Path]


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mammofl consortium"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


MAX_VALID_DAYS = 3650
# RFC 1123 labels, and _ (container service names) and a leading * (a wildcard) as TLS
# stacks accept them
DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


def _is_host(host: str) -> bool:
    """An IP address, or a DNS name of RFC 1123 labels (what a certificate's SAN may hold)."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        labels = host.rstrip(".").split(".")
        if len(labels) > 1 and labels[0] == "*":
            labels = labels[1:]
        return 0 < len(host) <= 253 and all(DNS_LABEL.fullmatch(label) for label in labels)


def _alt_names(hosts: list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_consortium(
    out_dir: Path, hosts: list[str], sites: list[str], *, valid_days: int = 365
) -> ConsortiumFiles:
    """Write a CA, the SuperLink's TLS certificate for `hosts` (DNS names or IP addresses) and
    one SuperNode key pair per site under `out_dir`. Raises ConfigError on an empty host list,
    an empty or duplicate site name, a name with '/', or an `out_dir` that already holds a CA
    (new keys would void the ones already registered and handed out)."""
    if (out_dir / "ca.key").exists() or (out_dir / "ca.pem").exists():
        raise ConfigError(
            f"{out_dir} already holds a consortium's CA; new keys would void the registered "
            "ones. To add a site, have it make its own key pair (ssh-keygen -t ecdsa -b 384 "
            '-f supernode -N "") and register its supernode.pub (docs/deployment.md); for a '
            "new consortium choose another out_dir"
        )
    if not hosts:
        raise ConfigError("certificates: give the SuperLink's host names (hosts=[...])")
    bad_hosts = [h for h in hosts if not _is_host(h)]
    if bad_hosts:
        raise ConfigError(
            f"certificates: {bad_hosts} are neither IP addresses nor DNS names (letters, "
            "digits, - and . only), e.g. hosts=[superlink.hospital.org,10.0.0.5]"
        )
    if not sites:
        raise ConfigError("certificates: name the sites (sites=[a,b]): one key pair each")
    if len(set(sites)) != len(sites) or not all(map(is_folder_name, sites)):
        raise ConfigError(
            f"certificates: site names must be unique, non-empty, no / or \\, not . or ..: {sites}"
        )
    if not 1 <= valid_days <= MAX_VALID_DAYS:
        raise ConfigError(f"valid_days={valid_days}: 1 to {MAX_VALID_DAYS} (ten years)")
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=valid_days)

    ca_key = ec.generate_private_key(CURVE)
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("mammofl consortium CA"))
        .issuer_name(_name("mammofl consortium CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA384())
    )

    server_key = ec.generate_private_key(CURVE)
    server = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(_alt_names(hosts)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA384())
    )

    files = ConsortiumFiles(
        ca_certificate=out_dir / "ca.pem",
        ca_key=out_dir / "ca.key",
        superlink_certificate=out_dir / "superlink.pem",
        superlink_key=out_dir / "superlink.key",
        site_private_keys={s: out_dir / "sites" / s / "supernode" for s in sites},
        site_public_keys={s: out_dir / "sites" / s / "supernode.pub" for s in sites},
    )
    atomic_write_bytes(files.ca_key, _pem_key(ca_key), PRIVATE)
    atomic_write_bytes(files.ca_certificate, ca.public_bytes(serialization.Encoding.PEM))
    atomic_write_bytes(files.superlink_key, _pem_key(server_key), PRIVATE)
    atomic_write_bytes(files.superlink_certificate, server.public_bytes(serialization.Encoding.PEM))
    for site in sites:
        key = ec.generate_private_key(CURVE)
        private = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        public = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        atomic_write_bytes(files.site_private_keys[site], private, PRIVATE)
        atomic_write_bytes(files.site_public_keys[site], public + f" {site}\n".encode())
    return files
