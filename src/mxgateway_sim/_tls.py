"""Self-signed TLS material for ``--tls-self-signed``: a private CA and a localhost server cert.

The files are reused when they already exist in the directory, so clients can keep trusting
the same CA across restarts.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path


class TlsSetupError(RuntimeError):
    """TLS material could not be created or read."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Paths of the PEM files a TLS server needs (``ca`` only for self-signed)."""

    cert: Path
    key: Path
    ca: Path | None = None

    def read(self) -> tuple[bytes, bytes]:
        """(private key, certificate chain) bytes for ``grpc.ssl_server_credentials``.

        The pair is checked first (PEM, parseable, the key matches the certificate), so a
        bad file is reported by name instead of surfacing later as a failure to bind.
        """
        try:
            key, cert = self.key.read_bytes(), self.cert.read_bytes()
        except OSError as exc:
            raise TlsSetupError(f"cannot read TLS file {exc.filename}: {exc.strerror}") from None
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(self.cert, self.key)
        except ssl.SSLError as exc:
            why = f" ({exc.reason})" if exc.reason else ""
            raise TlsSetupError(
                f"TLS files {self.cert} and {self.key} are not a usable certificate chain "
                f"and private key{why}: give PEM files whose key matches the certificate"
            ) from None
        except OSError as exc:
            raise TlsSetupError(f"cannot read TLS file {exc.filename}: {exc.strerror}") from None
        return key, cert


def ensure_self_signed(directory: Path) -> TlsFiles:
    """Create (or reuse) ``ca.pem``, ``server.pem`` and ``server-key.pem`` in ``directory``."""
    files = TlsFiles(directory / "server.pem", directory / "server-key.pem", directory / "ca.pem")
    if files.cert.exists() and files.key.exists() and files.ca is not None and files.ca.exists():
        return files
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError:  # pragma: no cover - depends on the install
        raise TlsSetupError(
            "--tls-self-signed needs the 'cryptography' package: "
            "pip install 'mxaccess-gateway-client[sim]'"
        ) from None
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TlsSetupError(f"cannot create {directory}: {exc.strerror}") from None
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mxgw-sim local CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=825))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=397))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    assert files.ca is not None
    files.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    files.key.chmod(0o600)
    return files
