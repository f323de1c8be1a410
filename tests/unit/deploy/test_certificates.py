"""The consortium's certificates and keys: a chain that verifies, the SuperLink's host names
and addresses in its certificate, SuperNode keys that flwr 1.42 itself accepts, secrets 0600."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key
from flwr.cli.supernode.register import try_load_public_key

from common.deploy.certificates import make_consortium
from common.errors import ConfigError


def test_chain_names_and_keys(tmp_path: Path) -> None:
    files = make_consortium(tmp_path, ["superlink.example.org", "10.0.0.5"], ["a", "b"])
    ca = x509.load_pem_x509_certificate(files.ca_certificate.read_bytes())
    server = x509.load_pem_x509_certificate(files.superlink_certificate.read_bytes())
    server.verify_directly_issued_by(ca)  # raises when the chain is broken
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["superlink.example.org"]
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.5")]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for site in ("a", "b"):
        private = load_ssh_private_key(files.site_private_keys[site].read_bytes(), None)
        assert isinstance(private, ec.EllipticCurvePrivateKey)
        assert private.curve.name == "secp384r1"
        assert try_load_public_key(files.site_public_keys[site])  # as `flwr supernode register`
    secret = [files.ca_key, files.superlink_key, *files.site_private_keys.values()]
    for path in secret:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(files.ca_certificate.stat().st_mode) & 0o044  # public: readable


def test_each_site_gets_its_own_key(tmp_path: Path) -> None:
    files = make_consortium(tmp_path, ["localhost"], ["a", "b"])
    assert files.site_public_keys["a"].read_bytes() != files.site_public_keys["b"].read_bytes()


@pytest.mark.parametrize(
    ("hosts", "sites", "days"),
    [
        ([], ["a"], 365),
        (["localhost"], ["a", "a"], 365),
        (["localhost"], ["x/y"], 365),
        (["localhost"], [".."], 365),  # its private key would sit beside ca.key
        (["localhost"], [], 365),  # a CA with no site keys, then refused as existing
        (["not a host!"], ["a"], 365),
        (["localhost"], ["a"], 100_000_000),  # an OverflowError traceback
    ],
)
def test_bad_names_are_refused(
    tmp_path: Path, hosts: list[str], sites: list[str], days: int
) -> None:
    with pytest.raises(ConfigError):
        make_consortium(tmp_path, hosts, sites, valid_days=days)
    assert not any(tmp_path.iterdir())  # nothing half-written
    hosts_seen = ["superlink.hospital-a.org", "10.0.0.5", "::1", "super_link", "*.hosp.org"]
    assert make_consortium(tmp_path / "ok", hosts_seen, ["a"])


def test_an_existing_ca_is_never_overwritten(tmp_path: Path) -> None:
    files = make_consortium(tmp_path, ["localhost"], ["a"])
    before = files.site_private_keys["a"].read_bytes()
    with pytest.raises(ConfigError, match="already holds"):
        make_consortium(tmp_path, ["localhost"], ["a"])
    assert files.site_private_keys["a"].read_bytes() == before
