"""TLS and mutual TLS with the clients users have: tritonclient over HTTPS and
gRPC with TLS, curl with a client certificate; refusals of plaintext, missing,
wrongly signed and expired client certificates; and certificate rotation while
a client keeps calling."""

import datetime
import ipaddress
import shutil
import socket
import ssl
import subprocess
import threading
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from conftest import BIN  # the binary under test, as the fixture runs it
import tritonclient.http as httpclient
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(cn):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(key, hashes.SHA256())
    )
    return cert, key


def make_leaf(ca, cn, server, days=(-1, 30)):
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + datetime.timedelta(days=days[0]))
        .not_valid_after(now + datetime.timedelta(days=days[1]))
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    )
    if server:
        b = b.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return b.sign(ca_key, hashes.SHA256()), key


def write(path, cert, key=None):
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        key_path = path.with_suffix(".key")
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return path, key_path
    return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca = make_ca("switchyard test CA")
    other = make_ca("someone else's CA")
    p = {"dir": d, "ca_obj": ca, "ca": write(d / "ca.pem", ca[0])}
    p["server"], p["server_key"] = write(d / "server.pem", *make_leaf(ca, "localhost", True))
    p["client"], p["client_key"] = write(d / "client.pem", *make_leaf(ca, "client", False))
    p["stranger"], p["stranger_key"] = write(d / "stranger.pem", *make_leaf(other, "client", False))
    p["expired"], p["expired_key"] = write(
        d / "expired.pem", *make_leaf(ca, "client", False, days=(-30, -1))
    )
    return p


def iris_http():
    x = np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32)
    i = httpclient.InferInput("input", list(x.shape), "FP32")
    i.set_data_from_numpy(x)
    return [i]


def iris_grpc():
    x = np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32)
    i = grpcclient.InferInput("input", list(x.shape), "FP32")
    i.set_data_from_numpy(x)
    return [i]


def tls_flags(pki, mutual=False, cert=None, key=None):
    flags = ["--tls-cert", str(cert or pki["server"]), "--tls-key", str(key or pki["server_key"])]
    if mutual:
        flags += ["--tls-client-ca", str(pki["ca"])]
    return flags


def test_tritonclient_over_https_and_grpc_tls(switchyard, pki):
    s = switchyard(*tls_flags(pki))
    c = httpclient.InferenceServerClient(
        s.http, ssl=True, ssl_options={"ca_certs": str(pki["ca"])}
    )
    assert c.is_server_ready()
    out = c.infer("iris", iris_http())
    assert out.as_numpy("label").tolist() == [0]
    c.close()
    g = grpcclient.InferenceServerClient(
        s.grpc, ssl=True, root_certificates=str(pki["ca"])
    )
    assert g.is_server_ready()
    assert g.infer("iris", iris_grpc()).as_numpy("label").tolist() == [0]
    g.close()


def test_plaintext_to_a_tls_port_gets_no_answer(switchyard, pki):
    s = switchyard(*tls_flags(pki))
    host, port = s.http.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"GET /v2/health/ready HTTP/1.1\r\nhost: x\r\n\r\n")
        got = b""
        try:
            while chunk := sock.recv(4096):
                got += chunk
        except (ConnectionResetError, socket.timeout):
            pass
    assert not got.startswith(b"HTTP/1.1 200"), got
    # The server is unharmed.
    c = httpclient.InferenceServerClient(s.http, ssl=True, ssl_options={"ca_certs": str(pki["ca"])})
    assert c.is_server_ready()


def curl(pki, url, cert=None, key=None):
    args = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10",
            "--cacert", str(pki["ca"]), url]
    if cert:
        args += ["--cert", str(cert), "--key", str(key)]
    return subprocess.run(args, capture_output=True, text=True)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_mutual_tls_requires_a_client_certificate_the_ca_signed(switchyard, pki):
    s = switchyard(*tls_flags(pki, mutual=True))
    url = f"https://{s.http}/v2/health/ready"
    ok = curl(pki, url, pki["client"], pki["client_key"])
    assert ok.stdout == "200", ok.stderr
    for cert, key in [(None, None), (pki["stranger"], pki["stranger_key"]),
                      (pki["expired"], pki["expired_key"])]:
        r = curl(pki, url, cert, key)
        assert r.stdout != "200", (cert, r.stdout, r.stderr)
    # gRPC with the client's certificate.
    g = grpcclient.InferenceServerClient(
        s.grpc, ssl=True, root_certificates=str(pki["ca"]),
        private_key=str(pki["client_key"]), certificate_chain=str(pki["client"]),
    )
    assert g.infer("iris", iris_grpc()).as_numpy("label").tolist() == [0]
    g.close()
    # And without one, refused.
    g = grpcclient.InferenceServerClient(s.grpc, ssl=True, root_certificates=str(pki["ca"]))
    with pytest.raises(Exception):
        g.is_server_ready()
    g.close()


def served_serial(addr, ca):
    ctx = ssl.create_default_context(cafile=str(ca))
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        with ctx.wrap_socket(sock, server_hostname="localhost") as tls:
            der = tls.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der).serial_number


def test_certificate_rotation_while_a_client_keeps_calling(switchyard, pki, tmp_path):
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    shutil.copy(pki["server"], cert)
    shutil.copy(pki["server_key"], key)
    s = switchyard(*tls_flags(pki, cert=cert, key=key))
    first = served_serial(s.http, pki["ca"])
    stop, errors, calls = threading.Event(), [], [0]

    def keep_calling():
        while not stop.is_set():
            # A new connection each call: each gets whatever is current.
            c = httpclient.InferenceServerClient(
                s.http, ssl=True, ssl_options={"ca_certs": str(pki["ca"])}
            )
            try:
                c.infer("iris", iris_http())
                calls[0] += 1
            except Exception as e:  # noqa: BLE001 - every failure counts
                errors.append(repr(e))
            finally:
                c.close()

    t = threading.Thread(target=keep_calling)
    t.start()
    try:
        time.sleep(0.5)
        # A broken file keeps the old certificate serving, and says so.
        cert.write_text("not a certificate")
        deadline = time.time() + 15
        while "does not load" not in s.log():
            assert time.time() < deadline, s.log()
            time.sleep(0.1)
        assert served_serial(s.http, pki["ca"]) == first
        # cert-manager writes the new pair: new handshakes get it.
        new_cert, new_key = make_leaf(pki["ca_obj"], "localhost", True)
        write(tmp_path / "new.pem", new_cert, new_key)
        shutil.copy(tmp_path / "new.key", key)
        shutil.copy(tmp_path / "new.pem", cert)
        deadline = time.time() + 15
        while served_serial(s.http, pki["ca"]) != new_cert.serial_number:
            assert time.time() < deadline, s.log()
            time.sleep(0.1)
        time.sleep(0.5)
    finally:
        stop.set()
        t.join()
    assert errors == [], errors[:3]
    assert calls[0] > 5


def test_the_operator_cli_over_mutual_tls(switchyard, pki):
    """`switchyard models` with --cacert, --cert and --key against a public
    port with mutual TLS and the admin token; without the CA or the client
    certificate no server answers it (exit 3), as curl sees it."""
    s = switchyard(*tls_flags(pki, mutual=True), "--admin-token", "cli-secret")
    url = f"https://127.0.0.1:{s.http.rsplit(':', 1)[1]}"
    base = [BIN, "models", "iris", "-o", "json", "--server", url, "--token", "cli-secret"]
    tls = ["--cacert", str(pki["ca"]), "--cert", str(pki["client"]), "--key", str(pki["client_key"])]
    ok = subprocess.run(base + tls, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert '"name": "iris"' in ok.stdout
    no_client_cert = subprocess.run(base + tls[:2], capture_output=True, text=True, timeout=60)
    assert no_client_cert.returncode == 3, no_client_cert.stderr
    no_ca = subprocess.run(base + tls[2:], capture_output=True, text=True, timeout=60)
    assert no_ca.returncode == 3, no_ca.stderr
    assert "cannot reach the server" in no_ca.stderr
