"""``meanet export`` and ``meanet edge predict``: a run's edge model onto a device, and adaptive inference there.

Thin: :mod:`meanet_core.inference.export` writes the signed file, :mod:`fl_client.predict` runs the engine. Mistakes
in the
input raise ValueError / OSError with a message; ``meanet_cli.main`` registers these commands behind its
``error: ...`` handler.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer


def export_model(
    out: Path = typer.Option(..., "--out", help="the edge model file to write, e.g. model.pt"),
    report_dir: Path | None = typer.Option(None, help="a federation's report folder (its state.pt)"),
    run: Path | None = typer.Option(None, "--run", help="a meanet train run folder (meanet.pt, train.json)"),
    signing_key: Path | None = typer.Option(
        None, help="Ed25519 private key (PEM) to sign with (default: the run's broadcast-signing.key)"
    ),
    class_names: Path | None = typer.Option(
        None, help="class names in class-id order (JSON list or one per line), when the run cannot tell"
    ),
    personal: Path | None = typer.Option(
        None,
        help="one device's personal state (STATE_DIR/personal.state of its SuperNode, personal = true): export "
        "that device's model (its own blocks, hard classes, class prior and policy on the shared main block)",
    ),
    format: str = typer.Option(
        "pt",
        "--format",
        help="pt: one signed weights-only PyTorch file (the device runs it with the full install) | onnx: an edge "
        "package, one ONNX graph per block and a signed manifest, for the edge runtime without PyTorch",
    ),
    int8: bool = typer.Option(
        False, "--int8", help="onnx: quantise each block to int8, calibrated on the run's images"
    ),
    calibration_images: int = typer.Option(
        1000, min=2, help="--int8: validation images of the run that calibrate; up to 2000 more check it vs float32"
    ),
) -> None:
    """Write a run's edge model for a device: a signed weights-only .pt, or an edge package (--format onnx)."""
    from meanet_core.inference.export import export, from_report_dir, from_train_run, read_class_names, with_personal
    from meanet_edge.report import describe_policy

    if format not in ("pt", "onnx"):
        raise ValueError(f"--format must be pt or onnx; got {format!r}")
    if int8 and format != "onnx":
        raise ValueError("--int8 quantises the graphs of an edge package: add --format onnx")

    if report_dir is not None and run is None:
        source = from_report_dir(report_dir)
    elif run is not None and report_dir is None:
        source = from_train_run(run)
    else:
        raise ValueError("give one of --report-dir DIR (a federation) or --run RUN (a meanet train run)")
    if personal is not None:
        source = with_personal(source, personal)
    names = read_class_names(class_names) if class_names is not None else None
    if format == "onnx":
        _export_package(source, out, signing_key, names, int8, calibration_images)
        return
    done = export(source, out, signing_key=signing_key, class_names=names)
    m, policy = source.model, source.policy
    routing = (
        f"{describe_policy(policy)}, from {source.policy_origin}"
        if policy
        else f"none recorded ({source.policy_origin}); the edge routes with the paper policy"
    )
    typer.echo(
        f"wrote {done.path}: {m.arch}, {m.num_classes} classes ({m.num_hard} hard), {m.input_size}x{m.input_size} "
        f"images, from {source.source}"
    )
    typer.echo(f"routing policy: {routing}")
    pin = f" ({done.public_key})" if done.public_key is not None else ""
    typer.echo(f"signed by key {done.fingerprint}: the edge pins its public key{pin} with --verify-key")


def _export_package(
    source: Any, out: Path, signing_key: Path | None, names: tuple[str, ...] | None, int8: bool, calibration: int
) -> None:
    """``meanet export --format onnx``: the edge package, float32 or int8 (calibrated and checked)."""
    from meanet_core.inference.export import export_signed
    from meanet_core.inference.onnx_export import export_package, validation_images
    from meanet_edge.report import describe_policy

    def write(key: Any, class_names: tuple[str, ...]) -> Path:
        cal = validation_images(source, calibration + 2000) if int8 else None
        path, check = export_package(source, out, key, class_names, calibration=cal, calibration_images=calibration)
        if check is not None and cal is not None:
            f32, i8 = check["float32"], check["int8"]
            typer.echo(
                f"int8: calibrated on {min(calibration, len(cal.x))} images ({cal.source}); checked on "
                f"{check['images']} more: main exit {f32['main_accuracy']:.4f} float32 -> {i8['main_accuracy']:.4f} "
                f"int8, edge {f32['edge_accuracy']:.4f} -> {i8['edge_accuracy']:.4f}, same exit "
                f"{check['same_exit']:.4f}"
            )
        return path

    done = export_signed(source, write, signing_key=signing_key, class_names=names)
    m, policy = source.model, source.policy
    typer.echo(
        f"wrote {done.path} ({done.path.stat().st_size / 1e6:.2f} MB, {'int8' if int8 else 'float32'}): {m.arch}, "
        f"{m.num_classes} classes ({m.num_hard} hard), {m.input_size}x{m.input_size} images, from {source.source}"
    )
    typer.echo(f"routing policy: {describe_policy(policy) if policy else 'none recorded (paper at run time)'}")
    pin = f" ({done.public_key})" if done.public_key is not None else ""
    typer.echo(f"signed by key {done.fingerprint}: the device pins its public key{pin} with --verify-key")


def edge_predict(
    model: Path = typer.Option(
        ..., "--model", help="edge model written by meanet export: a .pt, or an edge package (--format onnx)"
    ),
    verify_key: Path = typer.Option(..., help="the cloud's public key (broadcast-signing.pub), pinned on the edge"),
    images: Path = typer.Option(..., help="a folder of images (flat, or one sub-folder per class), an image or .npz"),
    out: Path = typer.Option(..., "--out", help="CSV to write: one row per input"),
    cloud_url: str | None = typer.Option(None, help="the cloud offload service, https://HOST:PORT (none: edge only)"),
    ca: Path | None = typer.Option(None, "--ca", help="CA certificate (PEM) of the service's TLS certificate"),
    token: str | None = typer.Option(
        None, envvar="MEANET_CLOUD_TOKEN", show_envvar=True, help="bearer token (prefer the env var: ps shows options)"
    ),
    client_cert: Path | None = typer.Option(None, help="client certificate (PEM) for a service with mutual TLS"),
    client_key: Path | None = typer.Option(None, help="its private key (PEM)"),
    policy: str | None = typer.Option(None, help="paper | calibrated (default: the one recorded in the model file)"),
    entropy_threshold: float | None = typer.Option(None, help="paper policy: offload above this normalised entropy"),
    batch_size: int = typer.Option(64, min=1, help="inputs per engine call (and at most one cloud request each)"),
    timeout: float = typer.Option(2.0, help="deadline in seconds of one cloud request, retries included"),
    retries: int = typer.Option(2, min=0, help="extra attempts after a transient cloud failure"),
    bad_images: str = typer.Option("skip", help="unreadable files: skip (counted, with a warning) | error"),
    joules_per_mac: float = typer.Option(1e-10, help="edge compute energy per MAC"),
    uplink_mbps: float = typer.Option(5.64, help="uplink throughput, for the transmission energy"),
    progress: bool = typer.Option(True, help="progress bar"),
    threads: int | None = typer.Option(None, min=1, help="CPU threads (torch's, or ONNX Runtime's for a package)"),
    profile: Path | None = typer.Option(
        None, help="edge package: a device profile (meanet edge bench --out) to report measured energy too"
    ),
) -> None:
    """Run adaptive inference on new inputs: main block, extension, cloud; one CSV row per input, and a summary."""
    from meanet_edge.package import is_package

    if is_package(model):  # the edge runtime: ONNX Runtime, no torch (the device's own install runs the same)
        from meanet_edge.cli import predict_command

        typer.echo(
            predict_command(
                model=model,
                verify_key=verify_key,
                images=images,
                out=out,
                cloud_url=cloud_url,
                ca=ca,
                token=token,
                client_cert=client_cert,
                client_key=client_key,
                policy=policy,
                entropy_threshold=entropy_threshold,
                batch_size=batch_size,
                timeout=timeout,
                retries=retries,
                bad_images=bad_images,
                joules_per_mac=joules_per_mac,
                uplink_mbps=uplink_mbps,
                progress=progress,
                threads=threads,
                profile=profile,
            )
        )
        return
    if profile is not None:
        raise ValueError("--profile applies to an edge package (meanet export --format onnx); this is a .pt model")
    import torch

    from fl_client.predict import connect_cloud, format_summary, predict_to_csv
    from meanet_core.inference.cost import CostConfig
    from meanet_core.inference.edge_model import load_edge_model
    from meanet_edge.inputs import open_inputs

    if threads:
        torch.set_num_threads(threads)
    if cloud_url is None and any(v is not None for v in (ca, client_cert, client_key)):
        raise ValueError("--ca, --client-cert and --client-key configure the cloud: give --cloud-url too")
    if policy is not None and policy not in ("paper", "calibrated"):
        raise ValueError(f"--policy must be paper or calibrated; got {policy!r}")
    edge = load_edge_model(model, verify_key)  # verified before anything is built
    routing = edge.routing_policy(policy, entropy_threshold)
    inputs = open_inputs(images, edge.model.input_size, edge.class_names, bad_images=bad_images)
    cost = CostConfig(joules_per_mac=joules_per_mac, uplink_throughput_mbps=uplink_mbps)
    cloud = None
    if cloud_url is not None:
        cloud = connect_cloud(
            cloud_url, edge, token=token, ca_certfile=ca, client_certfile=client_cert, client_keyfile=client_key,
            timeout_s=timeout, retries=retries,
        )  # fmt: skip
        batch_size = min(batch_size, int(cloud.info.get("max_request_images", batch_size)))
    try:
        run = predict_to_csv(
            edge, inputs, out, policy=routing, cloud=cloud, cost=cost, batch_size=batch_size, bad_images=bad_images,
            progress=progress,
        )  # fmt: skip
    finally:
        if cloud is not None:
            cloud.close()
    where = cloud_url or "none (the inputs routed to it are answered on the edge, fallback=true)"
    typer.echo(format_summary(run, where))
    typer.echo(f"predictions: {out}")


def edge_bench(
    model: Path = typer.Option(..., "--model", help="edge package (meanet export --format onnx)"),
    verify_key: Path = typer.Option(..., help="the cloud's public key (broadcast-signing.pub), pinned on the edge"),
    power_watts: float = typer.Option(5.0, help="the device's power draw while computing, in watts (stated)"),
    batch_size: int = typer.Option(64, min=1, help="the batch measured beside batch 1"),
    repeats: int = typer.Option(20, min=1, help="timed calls per block and batch (the median is kept)"),
    threads: int | None = typer.Option(None, min=1, help="ONNX Runtime threads (default: one per core)"),
    out: Path | None = typer.Option(None, "--out", help="write the device profile (JSON) here"),
) -> None:
    """Measure each block of an edge package on this machine: latency per input, and energy at a stated power."""
    from meanet_edge.cli import bench_command

    typer.echo(
        bench_command(
            model=model,
            verify_key=verify_key,
            power_watts=power_watts,
            batch_size=batch_size,
            repeats=repeats,
            threads=threads,
            out=out,
        )
    )
