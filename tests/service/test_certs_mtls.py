"""The offload service with the certificates of ``meanet certs``: TLS for its host names, mutual TLS for the edges."""

from __future__ import annotations

from pathlib import Path

import torch

from fl_client.offload import RemoteCloud
from meanet_core.models import CloudModel
from meanet_core.trust.certs import write_deployment_keys
from meanet_core.trust.tls import DevCertificates
from tests.service.conftest import start_service


def test_the_service_takes_meanet_certs_for_tls_and_client_authentication(
    cloud_model: CloudModel, tmp_path: Path
) -> None:
    written = write_deployment_keys(tmp_path / "certs", supernodes=0)
    certs = DevCertificates(
        written.ca_cert, written.server_cert, written.server_key, written.client_cert, written.client_key
    )
    server = start_service(cloud_model, certs, token=None, ca_certfile=written.ca_cert)  # mutual TLS only
    x = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    try:
        with RemoteCloud(
            server.url, ca_certfile=written.ca_cert, client_certfile=written.client_cert,
            client_keyfile=written.client_key,
        ) as cloud:  # fmt: skip
            assert cloud.classify(x).ok.all()
        with RemoteCloud(server.url, ca_certfile=written.ca_cert, macs_per_image=1, retries=0) as cloud:
            assert not cloud.classify(x).ok.any()  # no client certificate: refused
    finally:
        server.stop()
