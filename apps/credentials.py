"""`a3c credentials DIR`: the token and TLS files a deployment runs with, made once and rotated in place.

    DIR/ca/       ca.crt, ca.key         the deployment's own certificate authority (stays here)
    DIR/learner/  tls.crt, tls.key,      the learner's certificate for --hosts, signed by the CA;
                  ca.crt, tokens         the CA (for its health checks); every token it accepts
    DIR/actor/    ca.crt, tokens         what an actor needs: the CA to trust, the tokens to present

Running it again keeps what is valid and makes only what is missing, expiring within 30 days, or issued for other
host names, so a compose stack can run it at every start. Every file is written to a temporary name and renamed
into place (readers never see half a file), readable by its owner only.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import secrets
from pathlib import Path

from a3c.files import replace_file
from a3c.tokens import parse_tokens

# The names the learner answers to: compose's service, Kubernetes' Service in the namespace a3c, and this host.
DEFAULT_HOSTS = ("learner", "learner.a3c", "learner.a3c.svc", "learner.a3c.svc.cluster.local", "localhost",
                 "127.0.0.1")
CA_DAYS = 3650
CERT_DAYS = 365
RENEW_WITHIN_DAYS = 30
SECRET_NAMES = {"learner": "a3c-learner-credentials", "actor": "a3c-actor-credentials"}


def new_token() -> str:
    return secrets.token_urlsafe(32)


def write_private(path: Path, data: str | bytes) -> None:
    """Replace `path` with `data` in one rename, readable by its owner only."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    replace_file(path, data, private=True)


def write_tokens(path: Path, tokens: list[str]) -> None:
    write_private(path, "".join(f"{token}\n" for token in tokens))


def _names(hosts: list[str]):
    from cryptography import x509

    names = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _issue(subject: str, key, issuer_name, issuer_key, days: int, hosts: list[str] | None):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    is_ca = hosts is None
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name or name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(_now() - datetime.timedelta(minutes=5))
               .not_valid_after(_now() + datetime.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=is_ca, path_length=0 if is_ca else None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=is_ca, crl_sign=is_ca,
                                            content_commitment=False, key_encipherment=False, data_encipherment=False,
                                            key_agreement=False, encipher_only=False, decipher_only=False),
                              critical=True))
    if not is_ca:
        builder = (builder.add_extension(x509.SubjectAlternativeName(_names(hosts)), critical=False)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False))
    return builder.sign(issuer_key or key, hashes.SHA256())


def _pem_key(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _pem_cert(cert) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM)


def _load(cert_path: Path, key_path: Path):
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    if not (cert_path.exists() and key_path.exists()):
        return None, None
    return (x509.load_pem_x509_certificate(cert_path.read_bytes()),
            serialization.load_pem_private_key(key_path.read_bytes(), password=None))


def _still_good(cert, ca_cert, hosts: list[str] | None) -> bool:
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature

    if cert.not_valid_after_utc - _now() < datetime.timedelta(days=RENEW_WITHIN_DAYS):
        return False
    if ca_cert is None:
        return True
    try:
        cert.verify_directly_issued_by(ca_cert)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (InvalidSignature, ValueError, TypeError, x509.ExtensionNotFound):  # another CA's, or no names
        return False
    return set(names) == set(_names(hosts or []))


def ensure(root: Path, hosts: list[str], rotate_token: bool = False, retire_old_tokens: bool = False) -> list[str]:
    """Make or renew what `root` lacks; returns one line per change."""
    from cryptography.hazmat.primitives.asymmetric import ec

    done = []
    ca_dir, learner_dir, actor_dir = root / "ca", root / "learner", root / "actor"
    ca_cert, ca_key = _load(ca_dir / "ca.crt", ca_dir / "ca.key")
    if ca_cert is None or not _still_good(ca_cert, None, None):
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = _issue("a3c-grpc CA", ca_key, None, None, CA_DAYS, None)
        write_private(ca_dir / "ca.key", _pem_key(ca_key))
        write_private(ca_dir / "ca.crt", _pem_cert(ca_cert))
        done.append(f"made a certificate authority in {ca_dir}")
    cert, _ = _load(learner_dir / "tls.crt", learner_dir / "tls.key")
    if cert is None or not _still_good(cert, ca_cert, hosts):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _issue("learner", key, ca_cert.subject, ca_key, CERT_DAYS, hosts)
        write_private(learner_dir / "tls.key", _pem_key(key))
        write_private(learner_dir / "tls.crt", _pem_cert(cert))
        done.append(f"issued the learner a certificate for {', '.join(hosts)} (valid {CERT_DAYS} days)")
    for folder in (learner_dir, actor_dir):
        if not (folder / "ca.crt").exists() or (folder / "ca.crt").read_bytes() != _pem_cert(ca_cert):
            write_private(folder / "ca.crt", _pem_cert(ca_cert))

    tokens_file = learner_dir / "tokens"
    tokens = list(parse_tokens(tokens_file.read_text())) if tokens_file.exists() else []
    if not tokens or rotate_token:
        tokens.insert(0, new_token())
        kept = f" (the {len(tokens) - 1} before it still accepted)" if len(tokens) > 1 else ""
        done.append(f"made a new token{kept}")
    if retire_old_tokens and len(tokens) > 1:
        done.append(f"retired {len(tokens) - 1} older token(s)")
        tokens = tokens[:1]
    # The same list on both sides, the learner's file first, so that it knows a new token before an actor
    # presents it; an actor whose token is refused presents the next in its file (on Kubernetes the kubelet
    # refreshes each pod's Secret in its own time).
    for path in (tokens_file, actor_dir / "tokens"):
        if not path.exists() or parse_tokens(path.read_text()) != tuple(tokens):
            write_tokens(path, tokens)
    return done


def kubernetes_secrets(root: Path, namespace: str) -> str:
    """The learner's and the actors' files as two Secrets, for `kubectl apply -f -` (again after a rotation: the
    pods see the new files within a minute or so, without a restart)."""
    documents = []
    for part, name in SECRET_NAMES.items():
        files = sorted(p for p in (root / part).iterdir() if p.is_file() and not p.name.startswith("."))
        data = "".join(f"  {p.name}: {base64.b64encode(p.read_bytes()).decode()}\n" for p in files)
        documents.append(f"apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: {namespace}\n"
                         f"  labels:\n    app.kubernetes.io/part-of: a3c-grpc\ntype: Opaque\ndata:\n{data}")
    return "---\n".join(documents)
