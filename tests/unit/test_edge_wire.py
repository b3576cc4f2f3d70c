"""The offload wire on the device side (meanet_edge.payload, meanet_edge.cloud): numpy frames that are byte for byte
the torch ones (meanet_core.wire.payload), malformed frames refused with a useful PayloadError, the client's retries
and fallbacks, and both modules importable where torch is not."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from meanet_core.wire import payload as torch_payload
from meanet_edge import payload
from meanet_edge.cloud import CloudAnswer, CloudClient

ROOT = Path(__file__).resolve().parents[2]
SHAPES = [(1, 1, 1, 1), (2, 3, 4, 5), (5, 3, 32, 32)]


def _images(shape: tuple[int, ...], dtype: str, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape).astype(dtype)


# ------------------------------------------------------------------------------------------- frames: both ends agree
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_numpy_frames_round_trip_and_match_the_torch_frames(shape: tuple[int, ...], dtype: str) -> None:
    x = _images(shape, dtype)
    frame = payload.encode_images(x)
    assert len(frame) == payload.HEADER_BYTES + x.nbytes
    out = payload.decode_images(frame)
    assert out.dtype == x.dtype and np.array_equal(out, x) and out.flags.writeable
    assert torch_payload.encode_images(torch.from_numpy(x)) == frame  # the device and the service write the same
    assert torch.equal(torch_payload.decode_images(frame), torch.from_numpy(x))

    labels = np.arange(shape[0], dtype=np.int64) * 7
    reply = payload.encode_labels(labels)
    assert torch_payload.encode_labels(torch.from_numpy(labels)) == reply
    decoded = payload.decode_labels(reply, expected=shape[0])
    assert decoded.dtype == np.int64 and np.array_equal(decoded, labels)


def test_byte_order_and_layout_do_not_change_the_frame() -> None:
    x = _images((2, 3, 4, 5), "float32")
    frame = payload.encode_images(x)
    assert payload.encode_images(x.astype(">f4")) == frame  # big-endian input is sent little-endian
    assert payload.encode_images(np.asfortranarray(x)) == frame
    assert payload.encode_images(x.transpose(0, 2, 3, 1).copy().transpose(0, 3, 1, 2)) == frame  # channels-last view
    assert payload.encode_labels(np.array([3, 1], dtype=np.uint8)) == payload.encode_labels(np.array([3, 1]))


# ------------------------------------------------------------------------------------------- frames: refused
GOOD = payload.encode_images(_images((2, 3, 4, 4), "uint8"))
LABELS = payload.encode_labels(np.array([1, 2]))


def _header(**fields: int | bytes) -> bytes:
    values = {"magic": b"MEAN", "version": 1, "kind": 1, "dtype": 1, "flags": 0, "n": 2, "c": 3, "h": 4, "w": 4}
    values.update(fields)
    return payload._HEADER.pack(*values.values())


MALFORMED: dict[str, tuple[bytes, Callable[[bytes], object], str]] = {
    "short header": (GOOD[:10], payload.decode_images, "too short for its header.*encode_images"),
    "json": (b'{"images": [[0.1, 0.2]]}', payload.decode_images, "bad magic.*encode it with encode_images"),
    "version": (_header(version=9) + GOOD[18:], payload.decode_images, "unsupported payload version 9"),
    "kind": (_header(kind=5) + GOOD[18:], payload.decode_images, "unknown payload kind 5"),
    "dtype": (_header(dtype=7) + GOOD[18:], payload.decode_images, "unknown dtype code 7: expected one of 1 \\(uint8"),
    "flags": (_header(flags=1) + GOOD[18:], payload.decode_images, "reserved flags byte"),
    "zero dimension": (_header(n=0), payload.decode_images, "zero dimension"),
    "truncated": (GOOD[:-1], payload.decode_images, "truncated body: the header declares uint8 \\(2, 3, 4, 4\\) = 96"),
    "trailing": (GOOD + b"\x00", payload.decode_images, "trailing bytes after the body.*as encode_images wrote it"),
    "labels for images": (LABELS, payload.decode_images, "expected a images frame \\(kind 1\\), found labels"),
    "images for labels": (GOOD, payload.decode_labels, "expected a labels frame"),
    "float labels": (_header(kind=2, dtype=2, n=2, c=1, h=1, w=1) + bytes(8), payload.decode_labels, "holds int32"),
    "label count": (LABELS, lambda b: payload.decode_labels(b, expected=3), "holds 2 labels for 3 images sent"),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_frames_raise_a_payload_error_that_says_what_is_wrong(name: str) -> None:
    buf, decode, message = MALFORMED[name]
    with pytest.raises(payload.PayloadError, match=message):
        decode(buf)
    with pytest.raises(torch_payload.PayloadError, match=message):  # the same class, through the torch module
        decode(buf)


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (np.zeros((1, 3, 2, 2), np.float64), TypeError, "uint8, float32 or int32 arrays; got float64"),
        (np.zeros((3, 2, 2), np.uint8), ValueError, r"\(n, c, h, w\) arrays; got shape \(3, 2, 2\)"),
        (np.zeros((0, 3, 2, 2), np.uint8), ValueError, "does not fit the header"),
        ([[1, 2]], TypeError, "numpy arrays"),
    ],
)
def test_encode_images_refuses_what_the_frame_cannot_carry(value: object, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        payload.encode_images(value)  # type: ignore[arg-type]


def test_encode_labels_refuses_non_integers_and_out_of_range_labels() -> None:
    with pytest.raises(TypeError, match="integers"):
        payload.encode_labels(np.array([0.5]))
    with pytest.raises(ValueError, match="fit int32"):
        payload.encode_labels(np.array([2**40]))
    with pytest.raises(ValueError, match=r"shape \(n,\)"):
        payload.encode_labels(np.zeros((2, 1), np.int64))


def test_the_torch_module_names_torch_dtypes() -> None:
    with pytest.raises(TypeError, match=r"tensors; got torch\.float64"):
        torch_payload.encode_images(torch.zeros(1, 3, 2, 2, dtype=torch.float64))


# ------------------------------------------------------------------------------------------- the client, on arrays
def _client(handler: Callable[[httpx.Request], httpx.Response], **kw: object) -> CloudClient:
    """A client whose HTTP goes to ``handler`` (no socket)."""
    options: dict = {"macs_per_image": 1, "allow_insecure": True, "backoff_s": 0.0, **kw}
    cloud = CloudClient("http://cloud.test", **options)
    cloud._client = httpx.Client(base_url=cloud.url, transport=httpx.MockTransport(handler))
    return cloud


def test_classify_array_retries_a_503_then_reads_the_service_frame() -> None:
    x = _images((3, 3, 4, 4), "uint8")
    seen: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.content)
        if len(seen) == 1:
            return httpx.Response(503, json={"detail": "warming up"})
        labels = torch_payload.encode_labels(torch.tensor([4, 5, 6]))  # what the service answers
        return httpx.Response(200, content=labels, headers={"X-MEANet-Macs-Per-Image": "1234"})

    with _client(handler) as cloud:
        answer = cloud.classify_array(x)
        assert isinstance(answer, CloudAnswer) and answer.ok.all() and answer.labels.tolist() == [4, 5, 6]
        assert seen == [torch_payload.encode_images(torch.from_numpy(x))] * 2
        assert cloud.macs_per_image == 1234
        assert cloud.stats.attempts == 2 and cloud.stats.failures == {"HTTP 503": 1}
        assert cloud.stats.answered_images == 3


def test_classify_array_falls_back_then_opens_the_circuit() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(401, json={"detail": "missing credentials"})

    with _client(handler, circuit_failures=2, circuit_cooldown_s=60.0) as cloud:
        for _ in range(3):
            answer = cloud.classify_array(_images((2, 3, 4, 4), "uint8"))
            assert not answer.ok.any() and answer.labels.tolist() == [0, 0]
        assert len(calls) == 2  # 401 is not retried; the third call finds the circuit open
        assert cloud.stats.skipped_calls == 1 and cloud.stats.fallback_images == 6
        assert cloud.last_error is not None and "circuit open" in cloud.last_error
        assert cloud.classify_array(np.zeros((0, 3, 4, 4), np.uint8)).ok.shape == (0,)


def test_classify_array_wants_uint8_batches() -> None:
    with _client(lambda r: httpx.Response(500)) as cloud:
        with pytest.raises(TypeError, match=r"uint8 images.*astype\(np.uint8\)"):
            cloud.classify_array(np.zeros((1, 3, 4, 4), np.float32))
        with pytest.raises(ValueError, match="batch dimension"):
            cloud.classify_array(np.zeros((3, 4, 4), np.uint8))


def test_the_client_refuses_plain_http_and_half_a_client_certificate() -> None:
    with pytest.raises(ValueError, match="plain HTTP"):
        CloudClient("http://127.0.0.1:1", macs_per_image=1)
    with pytest.raises(ValueError, match="both client_certfile and client_keyfile"):
        CloudClient("https://127.0.0.1:1", macs_per_image=1, client_certfile="edge.pem")


# ------------------------------------------------------------------------------------------- no torch on the device
def test_the_edge_wire_imports_without_torch_flower_or_avalanche() -> None:
    blocked = "('torch', 'torchvision', 'flwr', 'avalanche')"
    code = (
        f"import sys; [sys.modules.__setitem__(m, None) for m in {blocked}]; "
        "import meanet_edge.payload, meanet_edge.cloud; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('meanet_core', 'fl_client', 'fl_server')); "
        "assert not bad, bad"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
