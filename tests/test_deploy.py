"""The example deployment files in deploy/ are valid for the tools that read them."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
ROOT = DEPLOY.parent
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sessions.example.internal")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    certificate_path, key_path = directory / "cert.pem", directory / "key.pem"
    certificate_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return certificate_path, key_path


@pytest.mark.skipif(NGINX is None, reason="no nginx binary on this machine (apt-get install nginx-light)")
def test_nginx_example_config_passes_nginx_t(tmp_path):
    certificate, key = self_signed_certificate(tmp_path)
    # Only the host-specific file paths change; every directive is tested as shipped.
    site = (
        (DEPLOY / "nginx.conf")
        .read_text()
        .replace("/etc/ssl/certs/sessionsvc.pem", str(certificate))
        .replace("/etc/ssl/private/sessionsvc.key", str(key))
        .replace("/var/log/nginx/", f"{tmp_path}/")
    )
    (tmp_path / "sessionsvc.conf").write_text(site)
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log stderr;\nevents {{}}\n"
        f"http {{\n  access_log off;\n  include {tmp_path}/sessionsvc.conf;\n}}\n"
    )
    result = subprocess.run(
        [NGINX, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-e", "stderr"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="no systemd-analyze on this machine")
def test_systemd_unit_passes_systemd_analyze_verify(tmp_path):
    # The unit as shipped, pointed at this checkout instead of /opt/sessionsvc.
    unit = (
        (DEPLOY / "sessionsvc@.service")
        .read_text()
        .replace("/opt/sessionsvc", str(ROOT))
        .replace("EnvironmentFile=/etc/sessionsvc/sessionsvc.env", "EnvironmentFile=-/etc/sessionsvc/sessionsvc.env")
    )
    (tmp_path / "sessionsvc@8001.service").write_text(unit)
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", "./sessionsvc@8001.service"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_systemd_unit_starts_gunicorn_with_the_repository_config():
    unit = (DEPLOY / "sessionsvc@.service").read_text()
    assert "ExecStart=/opt/sessionsvc/.venv/bin/gunicorn -c gunicorn.conf.py wsgi:app" in unit
    # Several instances on one host: each has its own metrics directory.
    assert "Environment=PROMETHEUS_MULTIPROC_DIR=/run/sessionsvc-%i/metrics" in unit
    assert "RuntimeDirectory=sessionsvc-%i" in unit
