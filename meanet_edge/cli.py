"""The device's ``meanet`` command (the edge runtime's own install, ``pip install ./edge``): ``meanet edge predict``
and ``meanet edge bench`` on an edge package, without torch.

The full install's ``meanet`` (:mod:`meanet_cli.main`) has the same two commands and calls the functions below for
an edge package, so the options mean the same on both. Every other command (train, federate, export, ...) needs the
full install; this one says so.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from meanet_edge.cost import CostConfig
from meanet_edge.package import read_package
from meanet_edge.policy import choose_policy
from meanet_edge.profile import DeviceProfile, measure
from meanet_edge.report import format_summary
from meanet_edge.runtime import EdgeRuntime

log = logging.getLogger("meanet.edge")
DEFAULT_POWER_W = 5.0


def predict_command(
    *,
    model: Path,
    verify_key: Path,
    images: Path,
    out: Path,
    cloud_url: str | None = None,
    ca: Path | None = None,
    token: str | None = None,
    client_cert: Path | None = None,
    client_key: Path | None = None,
    policy: str | None = None,
    entropy_threshold: float | None = None,
    batch_size: int = 64,
    timeout: float = 2.0,
    retries: int = 2,
    bad_images: str = "skip",
    joules_per_mac: float = 1e-10,
    uplink_mbps: float = 5.64,
    progress: bool = True,
    threads: int | None = None,
    profile: Path | None = None,
) -> str:
    """Route every input of ``images`` through the package ``model`` (verified against ``verify_key`` before any
    graph is built), write the CSV ``out``; returns the summary to print."""
    from meanet_edge.cloud import CloudClient, connect
    from meanet_edge.inputs import open_inputs
    from meanet_edge.predict import predict_to_csv

    if cloud_url is None and any(v is not None for v in (ca, client_cert, client_key)):
        raise ValueError("--ca, --client-cert and --client-key configure the cloud: give --cloud-url too")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1; got {batch_size}")
    package = read_package(model, verify_key)  # verified before anything is built
    routing = choose_policy(package.manifest.get("policy"), policy, entropy_threshold)
    device = DeviceProfile.load(profile) if profile is not None else None
    inputs = open_inputs(images, package.input_size, package.class_names, bad_images=bad_images)
    cost = CostConfig(joules_per_mac=joules_per_mac, uplink_throughput_mbps=uplink_mbps)
    cloud = None
    if cloud_url is not None:
        cloud = connect(
            cloud_url, package.input_size, len(package.class_names), CloudClient, token=token, ca_certfile=ca,
            client_certfile=client_cert, client_keyfile=client_key, timeout_s=timeout, retries=retries,
        )  # fmt: skip
        batch_size = min(batch_size, int(cloud.info.get("max_request_images", batch_size)))
    try:
        runtime = EdgeRuntime(package, routing, cloud, cost, threads=threads)
        run = predict_to_csv(
            runtime.predict, package.class_names, inputs, out, policy=routing.as_dict(), batch_size=batch_size,
            bad_images=bad_images, progress=progress, profile=device, cost=cost,
        )  # fmt: skip
    finally:
        if cloud is not None:
            cloud.close()
    where = cloud_url or "none (the inputs routed to it are answered on the edge, fallback=true)"
    precision = package.manifest.get("precision", "?")
    return f"{format_summary(run, where)}\nmodel: {model} ({precision}, signed by {package.signer})\npredictions: {out}"


def bench_command(
    *,
    model: Path,
    verify_key: Path,
    power_watts: float = DEFAULT_POWER_W,
    batch_size: int = 64,
    repeats: int = 20,
    threads: int | None = None,
    out: Path | None = None,
) -> str:
    """Measure the package's blocks on this machine; write the device profile to ``out``; returns the table."""
    package = read_package(model, verify_key)
    runtime = EdgeRuntime(package, choose_policy(package.manifest.get("policy")), threads=threads)
    prof = measure(runtime, power_w=power_watts, batch_size=batch_size, repeats=repeats, threads=threads or 0)
    costs = package.manifest["costs"]
    ext_macs = int(costs["adaptive_macs"]) + int(costs["extension_macs"])
    joule_per_mac = CostConfig().joules_per_mac
    lines = [
        f"device: {prof.device}; package {model} ({prof.precision}); threads {threads or 'default'}",
        f"{'block':<22}{'ms/input b1':>12}{'ms/input b' + str(batch_size):>14}{'images/s b1':>13}"
        f"{'mJ measured':>13}{'mJ MACs model':>15}",
    ]
    for name, b1, bb, macs in (
        ("main", prof.main_s_batch1, prof.main_s, int(costs["main_macs"])),
        ("adaptive + extension", prof.extension_s_batch1, prof.extension_s, ext_macs),
    ):
        lines.append(
            f"{name:<22}{b1 * 1e3:>12.3f}{bb * 1e3:>14.3f}{1 / b1:>13.0f}{power_watts * b1 * 1e3:>13.4f}"
            f"{macs * joule_per_mac * 1e3:>15.4f}"
        )
    lines.append(
        f"measured = seconds x {power_watts:g} W (stated; set --power-watts to your device's); MACs model = MACs x "
        f"{joule_per_mac:g} J/MAC"
    )
    if out is not None:
        lines.append(f"profile: {prof.save(out)} (meanet edge predict --profile {out})")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- the command line
def _parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="meanet", description="MEANet-FL's edge runtime (no PyTorch): adaptive inference on an edge package."
    )
    commands = top.add_subparsers(dest="command")
    edge = commands.add_parser("edge", help="on an edge device: adaptive inference and a device profile")
    sub = edge.add_subparsers(dest="edge_command")
    p = sub.add_parser("predict", help="route inputs: main block, extension, cloud; one CSV row per input")
    p.add_argument("--model", type=Path, required=True, help="edge package (meanet export --format onnx)")
    p.add_argument("--verify-key", type=Path, required=True, help="the cloud's public key, pinned on the device")
    p.add_argument("--images", type=Path, required=True, help="a folder of images (flat or per class), an image, .npz")
    p.add_argument("--out", type=Path, required=True, help="CSV to write: one row per input")
    p.add_argument("--cloud-url", help="the cloud offload service, https://HOST:PORT (none: edge only)")
    p.add_argument("--ca", type=Path, help="CA certificate (PEM) of the service's TLS certificate")
    p.add_argument("--token", default=os.environ.get("MEANET_CLOUD_TOKEN"), help="bearer token ($MEANET_CLOUD_TOKEN)")
    p.add_argument("--client-cert", type=Path, help="client certificate (PEM) for mutual TLS")
    p.add_argument("--client-key", type=Path, help="its private key (PEM)")
    p.add_argument("--policy", choices=("paper", "calibrated"), help="default: the one recorded in the package")
    p.add_argument("--entropy-threshold", type=float, help="paper policy: offload above this normalised entropy")
    p.add_argument("--batch-size", type=int, default=64, help="inputs per call (and at most one cloud request each)")
    p.add_argument("--timeout", type=float, default=2.0, help="deadline in seconds of one cloud request")
    p.add_argument("--retries", type=int, default=2, help="extra attempts after a transient cloud failure")
    p.add_argument("--bad-images", choices=("skip", "error"), default="skip", help="unreadable files")
    p.add_argument("--joules-per-mac", type=float, default=1e-10, help="edge compute energy per MAC (MACs model)")
    p.add_argument("--uplink-mbps", type=float, default=5.64, help="uplink throughput, for the transmission energy")
    p.add_argument("--profile", type=Path, help="device profile (meanet edge bench --out): measured energy too")
    p.add_argument("--threads", type=int, help="ONNX Runtime threads (default: one per core)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress line")
    b = sub.add_parser("bench", help="measure each block on this machine: the device profile")
    b.add_argument("--model", type=Path, required=True, help="edge package (meanet export --format onnx)")
    b.add_argument("--verify-key", type=Path, required=True, help="the cloud's public key, pinned on the device")
    b.add_argument("--power-watts", type=float, default=DEFAULT_POWER_W, help="the device's power draw computing")
    b.add_argument("--batch-size", type=int, default=64, help="the batch measured beside batch 1")
    b.add_argument("--repeats", type=int, default=20, help="timed calls per block and batch (median)")
    b.add_argument("--threads", type=int, help="ONNX Runtime threads (default: one per core)")
    b.add_argument("--out", type=Path, help="write the device profile (JSON) here")
    return top


def main(argv: list[str] | None = None) -> int:
    """Entry point of the device's ``meanet``; returns the exit status (errors print ``error: ...``, no traceback)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = _parser()
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] != "edge" and not argv[0].startswith("-"):
        print(
            f"error: meanet {argv[0]} is not part of the edge runtime (meanet edge predict, meanet edge bench): "
            "training, federation and export need the full install (see the README)",
            file=sys.stderr,
        )
        return 2
    args = parser.parse_args(argv)
    if args.command != "edge" or args.edge_command is None:
        parser.print_help()
        return 2
    options = {k: v for k, v in vars(args).items() if k not in ("command", "edge_command")}
    try:
        if args.edge_command == "predict":
            print(predict_command(**options))
        else:
            print(bench_command(**options))
    except (ValueError, OSError) as e:  # bad input: what was wrong and how to fix it, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
