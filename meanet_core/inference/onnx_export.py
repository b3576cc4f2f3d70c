"""``meanet export --format onnx``: a run's MEANet as an edge package (:mod:`meanet_edge.package`), one ONNX graph
per block, in float32 or, with ``--int8``, statically quantised.

* **Graphs.** ``torch.onnx.export`` (the dynamo exporter) writes the main block (normalisation and the device's
  class prior included), the adaptive block and the extension (its residual on the main block's hard-class logits
  included), each with a dynamic batch. The device runs the extension's graphs on the inputs routed there only.
* **int8.** ONNX Runtime's static quantisation (``quantize_static``, QDQ format, after ``quant_pre_process``):
  weights int8 per output channel, activations uint8 (U8S8: on x86 the VNNI kernels take it; S8S8 ran slower than
  float32 in the issue's measurement), ranges from min/max over the calibration images. Calibration runs every
  image through every block (exits disabled): the extension is calibrated on the main block's features of all of
  them, not only on those a policy would route to it.
* **Checked.** The package records the calibration (images, where they came from, the method) and, on held-out
  images of the same split, each exit's accuracy in float32 and int8 and the share of inputs that leave at the same
  exit (:func:`compare_precisions`).
"""

from __future__ import annotations

import importlib.metadata
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from meanet_core.inference.export import ExportSource
from meanet_core.models import MEANet, describe_meanet
from meanet_edge.package import BLOCKS, EdgePackage, write_package
from meanet_edge.policy import EdgePolicy, choose_policy, softmax
from meanet_edge.runtime import EXIT_NAMES, EdgeRuntime

OPSET = 18
CALIBRATION_BATCH = 64


# ------------------------------------------------------------------------------------------------ graphs
class _Main(nn.Module):
    def __init__(self, model: MEANet) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model.forward_main(images)
        return out.logits, out.features  # (B, K), (B, C, h, w)


class _Adaptive(nn.Module):
    def __init__(self, model: MEANet) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.adaptive(self.model.normalize(images))  # (B, Ca, h, w)


class _Extension(nn.Module):
    def __init__(self, model: MEANet) -> None:
        super().__init__()
        self.model = model

    def forward(self, features: torch.Tensor, adaptive: torch.Tensor, main_hard_logits: torch.Tensor) -> torch.Tensor:
        out = self.model.extension(features, adaptive)  # (B, H)
        return out + main_hard_logits if self.model.residual_extension else out


def _export(module: nn.Module, args: tuple[torch.Tensor, ...], inputs: list[str], outputs: list[str]) -> bytes:
    batch = torch.export.Dim("batch", min=1, max=65536)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "graph.onnx"
        torch.onnx.export(
            module.eval(), args, str(path), input_names=inputs, output_names=outputs, opset_version=OPSET,
            dynamic_shapes=tuple({0: batch} for _ in args), external_data=False, dynamo=True, verbose=False,
        )  # fmt: skip
        return _stripped(path.read_bytes())


def _stripped(graph: bytes) -> bytes:
    """``graph`` without the exporter's per-node notes (source stack traces, doc strings): on a device they are
    bytes to carry and nothing to run (a fifth of an int8 graph)."""
    import onnx

    model = onnx.load_from_string(graph)
    model.doc_string = ""
    model.graph.doc_string = ""
    for node in model.graph.node:
        node.doc_string = ""
        del node.metadata_props[:]
    return bytes(model.SerializeToString())


def block_graphs(model: MEANet) -> dict[str, bytes]:
    """The float32 ONNX graph of each block of ``model`` (see :mod:`meanet_edge.package` for their interface)."""
    model = model.eval()
    side = model.input_size
    x = torch.rand(2, 3, side, side, device=model.hard_index.device)
    with torch.no_grad():
        main = model.forward_main(x)
        adaptive = model.adaptive(model.normalize(x))
        hard_logits = main.logits[:, model.hard_classes]
    return {
        "main": _export(_Main(model), (x,), ["images"], ["logits", "features"]),
        "adaptive": _export(_Adaptive(model), (x,), ["images"], ["adaptive"]),
        "extension": _export(
            _Extension(model),
            (main.features, adaptive, hard_logits),
            ["features", "adaptive", "main_hard_logits"],
            ["logits"],
        ),
    }


# ------------------------------------------------------------------------------------------------ int8
@dataclass(frozen=True)
class Calibration:
    """Images to calibrate on and to check against float32 (uint8 (N, 3, S, S), labels), and where they came from."""

    x: np.ndarray
    y: np.ndarray
    source: str


def validation_images(source: ExportSource, limit: int) -> Calibration:
    """Up to ``limit`` images of the run's own validation split (its dataset, data folder, split fraction and seed),
    to calibrate and check an int8 export."""
    from meanet_core.data.load import load_dataset

    d = source.data
    if not d.get("dataset"):
        raise ValueError(f"{source.source} does not say which dataset it was trained on, so int8 has no calibration")
    splits = load_dataset(
        str(d["dataset"]), data_dir=d.get("data_dir"), val_fraction=float(d.get("val_fraction") or 0.1),
        seed=int(d.get("seed") or 0), image_size=int(d["image_size"]), limit_train=d.get("limit_train") or None,
        bad_images=str(d.get("bad_images") or "skip"),
    )  # fmt: skip
    val = splits.val
    if len(val) < 2:
        raise ValueError(f"the run's validation split of {d['dataset']} holds {len(val)} images; int8 needs some")
    n = min(limit, len(val))
    where = f"{n} of the {len(val)} validation images of {d['dataset']} (the run's split, seed {d.get('seed') or 0})"
    return Calibration(val.x[:n].numpy(), val.y[:n].numpy(), where)


class _Reader:
    """An ONNX Runtime ``CalibrationDataReader`` over precomputed inputs of one graph, in batches."""

    def __init__(self, feeds: dict[str, np.ndarray]) -> None:
        n = len(next(iter(feeds.values())))
        self._batches: Iterator[dict[str, np.ndarray]] = iter(
            [{k: v[i : i + CALIBRATION_BATCH] for k, v in feeds.items()} for i in range(0, n, CALIBRATION_BATCH)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def _block_inputs(float_package: EdgePackage, images: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    """Every block's inputs for every calibration image (exits disabled): the float32 graphs run them all."""
    runtime = EdgeRuntime(float_package, EdgePolicy("paper"))
    x = images.astype(np.float32) / 255
    parts = [runtime.main(x[i : i + 256]) for i in range(0, len(x), 256)]
    logits, features = (np.concatenate([p[k] for p in parts]) for k in (0, 1))
    (adaptive,) = runtime.sessions["adaptive"].run(None, {"images": x})
    hard = np.ascontiguousarray(logits[:, runtime.hard_classes])
    return {
        "main": {"images": x},
        "adaptive": {"images": x},
        "extension": {"features": features, "adaptive": adaptive, "main_hard_logits": hard},
    }


@dataclass(frozen=True)
class QuantSettings:
    """How the blocks are quantised: the default is what ``--int8`` does; the others are for comparisons
    (``benchmarks/perf_edge_runtime.py --ablation``)."""

    per_channel: bool = True  # int8 weights with a scale per output channel (else one per tensor)
    method: str = "minmax"  # activation ranges: minmax | percentile (99.999%) | entropy
    activations: str = "uint8"  # uint8 (U8S8: VNNI kernels) | int8 (S8S8)

    def describe(self) -> str:
        weights = "per-channel" if self.per_channel else "per-tensor"
        return f"{self.method} ranges, QDQ, {weights} int8 weights, {self.activations} activations"


def quantize_graphs(
    float_package: EdgePackage, images: np.ndarray, settings: QuantSettings | None = None
) -> dict[str, bytes]:
    """Each block's graph quantised statically (default: QDQ, per-channel int8 weights, uint8 activations, min/max
    ranges), calibrated on ``images`` (uint8 (N, 3, S, S)) run through every block."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    q = settings or QuantSettings()
    methods = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }
    if q.method not in methods or q.activations not in ("uint8", "int8"):
        raise ValueError(f"quantisation: method one of {sorted(methods)}, activations uint8 | int8; got {q}")

    feeds = _block_inputs(float_package, images)
    out: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for block in BLOCKS:
            src, pre, dst = (Path(tmp) / f"{block}.{s}.onnx" for s in ("float", "pre", "int8"))
            src.write_bytes(float_package.graphs[block])
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
            quantize_static(
                str(pre), str(dst), _Reader(feeds[block]), quant_format=QuantFormat.QDQ, per_channel=q.per_channel,
                activation_type=QuantType.QUInt8 if q.activations == "uint8" else QuantType.QInt8,
                weight_type=QuantType.QInt8, calibrate_method=methods[q.method],
                extra_options={"ActivationSymmetric": q.activations == "int8", "WeightSymmetric": True},
            )  # fmt: skip
            out[block] = _stripped(dst.read_bytes())
    return out


def compare_precisions(
    float_package: EdgePackage, int8_package: EdgePackage, x: np.ndarray, y: np.ndarray
) -> dict[str, Any]:
    """Each exit's accuracy in float32 and int8 on ``x`` (uint8 images, labels ``y``), and how often the two route
    an input to the same exit under the package's policy (edge only: no cloud)."""
    policy = choose_policy(float_package.manifest.get("policy"))
    result: dict[str, Any] = {"images": len(x)}
    routes = {}
    for name, package in (("float32", float_package), ("int8", int8_package)):
        runtime = EdgeRuntime(package, policy)
        xf = x.astype(np.float32) / 255
        logits, features = runtime.main(xf)
        hard = runtime.hard_index[y] >= 0
        ext_logits = runtime.extension(xf[hard], features[hard], logits[hard]) if hard.any() else None
        ext_right = (
            float((runtime.hard_classes[ext_logits.argmax(1)] == y[hard]).mean()) if ext_logits is not None else None
        )
        pred = runtime.predict(x)
        routes[name] = pred
        result[name] = {
            "main_accuracy": float((softmax(logits).argmax(1) == y).mean()),
            "extension_accuracy_on_hard": ext_right,
            "edge_accuracy": float((pred.labels == y).mean()),
            "exits": {e: float((pred.exit == i).mean()) for i, e in enumerate(EXIT_NAMES[:2])},
        }
    result["same_exit"] = float((routes["float32"].exit == routes["int8"].exit).mean())
    result["same_label"] = float((routes["float32"].labels == routes["int8"].labels).mean())
    return result


# ------------------------------------------------------------------------------------------------ the package
def _versions() -> dict[str, str]:
    out = {"opset": str(OPSET)}
    for dist in ("meanet-fl", "torch", "onnx", "onnxruntime"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "?"
    return out


def _manifest(source: ExportSource, names: tuple[str, ...], precision: str, calibration: dict[str, Any] | None):
    model = source.model
    info = {b.name: b for b in describe_meanet(model)}
    blocks = {name: {"params": info[name].params, "macs": info[name].macs} for name in BLOCKS}
    return {
        "arch": model.arch,
        "num_classes": model.num_classes,
        "input_size": model.input_size,
        "class_names": list(names),
        "hard_classes": model.hard_classes.tolist(),
        "policy": source.policy,
        "mean": model.normalize.mean.flatten().tolist(),
        "std": model.normalize.std.flatten().tolist(),
        "precision": precision,
        "calibration": calibration,
        "versions": _versions(),
        "costs": {f"{b}_macs": blocks[b]["macs"] for b in BLOCKS} | {"image_bytes": 3 * model.input_size**2},
        "blocks": blocks,
        "source": source.source,
    }


def export_package(
    source: ExportSource,
    out: str | os.PathLike[str],
    key: Any,
    names: tuple[str, ...],
    *,
    calibration: Calibration | None = None,
    calibration_images: int = 1000,
    settings: QuantSettings | None = None,
) -> tuple[Path, dict[str, Any] | None]:
    """Write ``source``'s model as an edge package signed with ``key``: float32, or int8 when ``calibration`` is
    given (its first ``calibration_images`` images calibrate, the rest check the int8 graphs against float32).
    Returns the path and the int8 check (None for float32)."""
    graphs = block_graphs(source.model)
    manifest = _manifest(source, names, "float32", None)
    if calibration is None:
        return write_package(out, manifest, graphs, key), None
    if len(calibration.x) < 2:
        raise ValueError(f"int8 needs calibration images; {calibration.source} holds {len(calibration.x)}")
    k = min(calibration_images, len(calibration.x) - 1) if len(calibration.x) > calibration_images else None
    cal_x = calibration.x[:k] if k else calibration.x
    if (settings or QuantSettings()).method != "minmax" and len(cal_x) >= CALIBRATION_BATCH:
        cal_x = cal_x[: len(cal_x) // CALIBRATION_BATCH * CALIBRATION_BATCH]  # histograms merge equal batches only
    check_x, check_y = (calibration.x[k:], calibration.y[k:]) if k else (calibration.x, calibration.y)
    with tempfile.TemporaryDirectory() as tmp:
        float_path = write_package(Path(tmp) / "float.zip", manifest, graphs, key)
        float_package = _unverified(float_path, manifest, graphs)
        int8_graphs = quantize_graphs(float_package, cal_x, settings)
        int8_manifest = _manifest(source, names, "int8", None)
        int8_package = _unverified(float_path, int8_manifest, int8_graphs)
        check = compare_precisions(float_package, int8_package, check_x, check_y)
    int8_manifest["calibration"] = {
        "images": len(cal_x),
        "source": calibration.source,
        "method": f"{(settings or QuantSettings()).describe()} (onnxruntime quantize_static)",
        "checked_on": check["images"] if k else "the calibration images themselves (too few to hold any out)",
        "float32_vs_int8": check,
    }
    return write_package(out, int8_manifest, int8_graphs, key), check


def _unverified(path: Path, manifest: dict[str, Any], graphs: dict[str, bytes]) -> EdgePackage:
    """A package held in memory while it is being made (the exporter's own graphs: nothing to verify yet)."""
    return EdgePackage(path, manifest, graphs, signer="exporter")


__all__ = [
    "Calibration",
    "QuantSettings",
    "block_graphs",
    "compare_precisions",
    "export_package",
    "quantize_graphs",
    "validation_images",
]
