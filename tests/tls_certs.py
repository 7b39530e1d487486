"""Shared pieces of the security tests (test_security_kafka.py, test_security_amqp.py).

Certificates made with the `openssl` command line: a CA, a server certificate for
127.0.0.1/localhost, client certificates (trusted, untrusted, expired), all P-256 keys in PEM;
`certs` is the session fixture that makes them once. A missing `openssl` fails the test (a
security suite that skips proves nothing).

Users: `sluice user ...` run on a data directory before its broker starts
(`user_broker_factory`), as an operator prepares a node.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import Broker, sluice_bin

CLIENT_SUBJECT = "/O=Sluice/CN=client"
# Kafka's principal for a client certificate: the subject in RFC 2253 form (X500Principal
# getName()), most specific RDN first.
CLIENT_PRINCIPAL = "User:CN=client,O=Sluice"
CLIENT_CN = "client"

_OPENSSL_TIMEOUT_S = 30

_CONFIG = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[node]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[misnamed_node]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = IP:127.0.0.2
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[ca_section]
database = {dir}/index.txt
new_certs_dir = {dir}
serial = {dir}/serial
default_md = sha256
policy = policy_any
copy_extensions = none
unique_subject = no
[policy_any]
organizationName = optional
commonName = supplied
"""


@dataclass(frozen=True)
class Certs:
    directory: Path
    ca: Path                 # the CA the broker trusts (server chain and client certificates)
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path        # CN=client,O=Sluice signed by `ca`
    client_key: Path
    untrusted_ca: Path       # another CA the broker does not know
    untrusted_client_cert: Path  # same subject as client_cert, signed by `untrusted_ca`
    untrusted_client_key: Path
    expired_client_cert: Path    # same subject, signed by `ca`, valid only in 2020
    expired_client_key: Path
    node_cert: Path          # a cluster node's (server and client, IP 127.0.0.1), by `ca`
    node_key: Path
    untrusted_node_cert: Path    # the same, signed by `untrusted_ca`
    untrusted_node_key: Path
    misnamed_node_cert: Path     # signed by `ca`, but naming 127.0.0.2
    misnamed_node_key: Path

    def server_context(self) -> ssl.SSLContext:
        """A client-side context that trusts `ca` and checks the server's name."""
        return ssl.create_default_context(cafile=str(self.ca))

    def client_context(self, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
        """Trusts `ca`; presents `cert`/`key` (the trusted client certificate by default)."""
        context = self.server_context()
        context.load_cert_chain(str(cert or self.client_cert), str(key or self.client_key))
        return context


def openssl(*args, cwd: Path):
    binary = shutil.which("openssl")
    if binary is None:
        pytest.fail("the `openssl` command is required to make the test certificates "
                    "(Debian: apt-get install openssl)", pytrace=False)
    result = subprocess.run([binary, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                            timeout=_OPENSSL_TIMEOUT_S)
    if result.returncode != 0:
        pytest.fail(f"openssl {' '.join(map(str, args))} failed ({result.returncode}):\n"
                    f"{result.stdout}\n{result.stderr}", pytrace=False)
    return result


def _key(path: Path, cwd: Path):
    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-out", path, cwd=cwd)


def _ca(name: str, subject: str, config: Path, d: Path) -> tuple[Path, Path]:
    key, cert = d / f"{name}.key", d / f"{name}.pem"
    _key(key, d)
    openssl("req", "-x509", "-new", "-key", key, "-sha256", "-days", 3650, "-subj", subject,
            "-config", config, "-extensions", "v3_ca", "-out", cert, cwd=d)
    return cert, key


def _leaf(name: str, subject: str, extensions: str, ca: tuple[Path, Path], config: Path,
          d: Path) -> tuple[Path, Path]:
    key, csr, cert = d / f"{name}.key", d / f"{name}.csr", d / f"{name}.pem"
    _key(key, d)
    openssl("req", "-new", "-key", key, "-subj", subject, "-config", config, "-out", csr, cwd=d)
    openssl("x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial",
            "-sha256", "-days", 825, "-extfile", config, "-extensions", extensions,
            "-out", cert, cwd=d)
    return cert, key


def _expired_leaf(name: str, subject: str, ca: tuple[Path, Path], config: Path,
                  d: Path) -> tuple[Path, Path]:
    """`openssl x509` of OpenSSL 3.0 cannot set a past validity; `openssl ca` can."""
    key, csr, cert = d / f"{name}.key", d / f"{name}.csr", d / f"{name}.pem"
    _key(key, d)
    openssl("req", "-new", "-key", key, "-subj", subject, "-config", config, "-out", csr, cwd=d)
    (d / "index.txt").write_text("")
    (d / "serial").write_text("1000\n")
    openssl("ca", "-batch", "-config", config, "-name", "ca_section", "-cert", ca[0],
            "-keyfile", ca[1], "-in", csr, "-out", cert, "-extfile", config,
            "-extensions", "client", "-startdate", "20200101000000Z",
            "-enddate", "20200201000000Z", "-notext", cwd=d)
    return cert, key


def generate(directory: Path) -> Certs:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    config = d / "openssl.cnf"
    config.write_text(_CONFIG.format(dir=d))
    ca = _ca("ca", "/O=Sluice/CN=Sluice Test CA", config, d)
    server = _leaf("server", "/O=Sluice/CN=localhost", "server", ca, config, d)
    client = _leaf("client", CLIENT_SUBJECT, "client", ca, config, d)
    other_ca = _ca("untrusted-ca", "/O=Elsewhere/CN=Untrusted CA", config, d)
    untrusted = _leaf("untrusted-client", CLIENT_SUBJECT, "client", other_ca, config, d)
    expired = _expired_leaf("expired-client", CLIENT_SUBJECT, ca, config, d)
    node = _leaf("node", "/O=Sluice/CN=node", "node", ca, config, d)
    untrusted_node = _leaf("untrusted-node", "/O=Sluice/CN=node", "node", other_ca, config, d)
    misnamed_node = _leaf("misnamed-node", "/O=Sluice/CN=node", "misnamed_node", ca, config, d)
    return Certs(directory=d, ca=ca[0], ca_key=ca[1], server_cert=server[0],
                 server_key=server[1], client_cert=client[0], client_key=client[1],
                 untrusted_ca=other_ca[0], untrusted_client_cert=untrusted[0],
                 untrusted_client_key=untrusted[1], expired_client_cert=expired[0],
                 expired_client_key=expired[1], node_cert=node[0], node_key=node[1],
                 untrusted_node_cert=untrusted_node[0], untrusted_node_key=untrusted_node[1],
                 misnamed_node_cert=misnamed_node[0], misnamed_node_key=misnamed_node[1])


def tls_flags(certs: Certs, client_auth: str | None = None) -> list[str]:
    """`sluice serve` flags for the server certificate, and client certificates verified
    against `certs.ca` when `client_auth` is given (none, requested or required)."""
    flags = ["--tls-cert", certs.server_cert, "--tls-key", certs.server_key]
    if client_auth is not None:
        flags += ["--tls-client-ca", certs.ca, "--tls-client-auth", client_auth]
    return flags


def tls_handshake_outcome(port: int, context: ssl.SSLContext, timeout_s: float = 10.0) -> str:
    """Connects to 127.0.0.1:`port` with `context`, completes the handshake if the server lets it,
    then waits for whatever the server does next. With TLS 1.3 the server checks a client
    certificate after the client considers the handshake done, so a refusal shows as an alert
    or EOF on the first read. Returns "open" if the connection is still up after a short wait
    (nothing was sent), else a description of the refusal starting with "refused: "."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
    try:
        try:
            tls = context.wrap_socket(raw, server_hostname="localhost")
        except (ssl.SSLError, ConnectionError, OSError) as err:
            return f"refused: handshake: {err!r}"
        try:
            tls.settimeout(1.5)
            data = tls.recv(1)
            if not data:
                return "refused: closed after the handshake"
            return f"open (unexpected data {data!r})"
        except socket.timeout:
            return "open"
        except (ssl.SSLError, ConnectionError, OSError) as err:
            return f"refused: after handshake: {err!r}"
        finally:
            tls.close()
    finally:
        raw.close()


@pytest.fixture(scope="session")
def certs(tmp_path_factory) -> Certs:
    return generate(tmp_path_factory.mktemp("certs"))


def clean_env() -> dict:
    """The environment without SLUICE_* variables, as conftest.Broker runs the broker."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}


def sluice_user(data_dir: Path, *args, check=True) -> subprocess.CompletedProcess:
    """`sluice user ARGS --data-dir DATA_DIR`: the user store CLI on a stopped node's data."""
    command = [str(sluice_bin()), "user", *map(str, args), "--data-dir", str(data_dir)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30, env=clean_env(),
                            stdin=subprocess.DEVNULL)
    if check:
        assert result.returncode == 0, (
            f"{' '.join(command)} exited with {result.returncode}:\n{result.stdout}\n"
            f"{result.stderr}")
    return result


def add_user(data_dir: Path, name: str, password: str, tags: str | None = None,
             permissions: tuple[str, str, str] | None = None, vhost: str = "/"):
    """`sluice user add`, and `sluice user permissions` when `permissions` (configure, write,
    read) is given."""
    args = ["add", name, "--password", password]
    if tags:
        args += ["--tags", tags]
    sluice_user(data_dir, *args)
    if permissions is not None:
        configure, write, read = permissions
        sluice_user(data_dir, "permissions", name, "--vhost", vhost, "--configure", configure,
                    "--write", write, "--read", read)


@pytest.fixture
def user_broker_factory(tmp_path, request):
    """Like conftest's broker_factory, with a step before the broker starts:
    `start(*flags, prepare=fn)` calls `fn(data_dir)` on the new, empty data directory (to add
    users with the CLI) and then starts `sluice serve` on it."""
    brokers = []

    def start(*extra_args, prepare=None) -> Broker:
        index = len(brokers)
        data_dir = tmp_path / f"secure{index}" / "data"
        data_dir.mkdir(parents=True)
        if prepare is not None:
            prepare(data_dir)
        broker = Broker(data_dir, tmp_path / f"secure{index}" / "sluice.log", extra_args)
        brokers.append(broker)
        request.node._sluice_brokers = brokers
        return broker.start()

    yield start
    for broker in brokers:
        broker.kill9()


def wait_for_port(port: int, broker: Broker | None = None, timeout_s: float = 30.0):
    """Waits until 127.0.0.1:`port` accepts TCP connections (a second listener of a broker
    whose startup waited for its first)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if broker is not None and not broker.running():
                pytest.fail(f"the broker exited:\n{broker.log_tail()}")
            assert time.monotonic() < deadline, f"nothing listens on port {port}"
            time.sleep(0.05)
