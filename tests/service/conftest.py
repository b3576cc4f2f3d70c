"""Fixtures of the cloud-service tests: throwaway TLS material, a tiny cloud model, a real HTTPS service."""

from collections.abc import Iterator

import pytest
import torch

from fl_server.offload.service import BackgroundServer, ServiceConfig, create_app
from meanet_core.models import CloudModel, build_cloud
from meanet_core.trust.tls import DevCertificates, write_dev_certificates

TOKEN = "test-token-0123456789abcdef"
MAX_REQUEST_IMAGES = 64


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> DevCertificates:
    """A private CA, a server certificate for 127.0.0.1 and a client certificate, all in a temporary folder."""
    return write_dev_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def cloud_model() -> CloudModel:
    torch.manual_seed(0)
    return build_cloud("resnet20_cifar", 10).eval()  # random weights: the tests check plumbing, not accuracy


def start_service(cloud_model: CloudModel, certs: DevCertificates, **overrides: object) -> BackgroundServer:
    """A real uvicorn server with TLS on a free loopback port; the caller stops it."""
    options: dict = dict(token=TOKEN, max_batch=32, max_wait_ms=10.0, max_request_images=MAX_REQUEST_IMAGES)
    options |= dict(max_pending_images=1024, body_timeout_s=2.0)
    ca = overrides.pop("ca_certfile", None)
    options.update(overrides)
    app = create_app(cloud_model, ServiceConfig(**options))
    server = BackgroundServer(app, certfile=certs.server_cert, keyfile=certs.server_key, ca_certfile=ca)
    return server.start()


@pytest.fixture(scope="module")
def service(cloud_model: CloudModel, certs: DevCertificates) -> Iterator[BackgroundServer]:
    server = start_service(cloud_model, certs)
    try:
        yield server
    finally:
        server.stop()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
