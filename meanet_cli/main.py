"""The ``meanet`` command line: a thin layer over meanet_core."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import typer

from meanet_cli.bench import bench_app
from meanet_cli.edge import edge_bench, edge_predict, export_model
from meanet_cli.errors import EchoHandler as _EchoHandler
from meanet_cli.errors import comma_list as _csv
from meanet_cli.errors import fail as _fail
from meanet_cli.errors import user_errors as _user_errors
from meanet_cli.memory import bounded

# Tracebacks never show local variables: they can hold tokens, keys and paths.
app = typer.Typer(
    help="MEANet-FL: complexity-aware edge-cloud learning.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


@app.command()
@_user_errors
def train(
    out: Path = typer.Option(..., "--out", help="run folder: checkpoints, state.pt and train.json go here"),
    dataset: str = typer.Option("cifar100", help="cifar100 | cifar100-mini | cifar10 | digits | imagefolder"),
    model: str = typer.Option("resnet32_cifar", help="MEANet backbone (meanet models lists them)"),
    cloud_model: str = typer.Option("resnet110_cifar", help="cloud model (meanet models lists them)"),
    epochs: int = typer.Option(30, help="epochs of the main-block stage"),
    cloud_epochs: int | None = typer.Option(None, help="epochs of the cloud model (default: --epochs)"),
    extension_epochs: int | None = typer.Option(None, help="epochs of adaptive + extension (default: --epochs)"),
    batch_size: int = typer.Option(128, min=1, help="images per step (one that will not fit in memory stops first)"),
    lr: float = typer.Option(0.1, help="peak learning rate of the one-cycle schedule"),
    weight_decay: float = typer.Option(5e-4),
    label_smoothing: float = typer.Option(0.0),
    hard_method: str = typer.Option("precision", help="precision | confusion | cluster (on the validation split)"),
    hard_fraction: float = typer.Option(0.2, help="fraction of the classes that are hard"),
    hard_count: int | None = typer.Option(None, help="number of hard classes (overrides --hard-fraction)"),
    val_fraction: float = typer.Option(0.1, help="share of the training split held out for validation"),
    limit_train: int | None = typer.Option(None, help="train on a seeded subset of this many images"),
    seed: int = typer.Option(0),
    data_dir: str | None = typer.Option(None, help="folder with cifar100.npz (default: $MEANET_DATA_DIR)"),
    image_size: int | None = typer.Option(
        None,
        min=1,
        help="imagefolder: side the images are resized and cropped to (default: the model's own, 32 for *_cifar "
        "models, 224 for the others); the run is evaluated and served at it",
    ),
    bad_images: str = typer.Option(
        "skip", help="imagefolder files that are not readable images: skip (with a warning) | error (refuse them)"
    ),
    precision: str = typer.Option(
        "auto", help="training passes: fp32 | bf16 (autocast) | auto (bf16 where the CPU or GPU computes it natively)"
    ),
    resume: bool = typer.Option(True, help="continue from OUT/state.pt when it exists"),
    threads: int | None = typer.Option(None, min=1, help="torch CPU threads (default: torch's choice)"),
) -> None:
    """Train the main block, choose the hard classes, train adaptive + extension, train the cloud model."""
    import torch

    from meanet_core.config import ConfigError, TrainConfig
    from meanet_core.pipeline import run_training

    if threads:
        torch.set_num_threads(threads)
    options: dict[str, Any] = dict(
        dataset=dataset, model=model, cloud_model=cloud_model, epochs=epochs, cloud_epochs=cloud_epochs,
        extension_epochs=extension_epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
        label_smoothing=label_smoothing, hard_method=hard_method, hard_fraction=hard_fraction, hard_count=hard_count,
        val_fraction=val_fraction, limit_train=limit_train, seed=seed, data_dir=data_dir, image_size=image_size,
        bad_images=bad_images, precision=precision,
    )  # fmt: skip
    if out.exists() and not out.is_dir():
        _fail(f"--out {out} is a file; it must be a folder (new, or a run of the same options to resume)")
    try:
        cfg = TrainConfig(**options)
        run_training(cfg, out, resume=resume, log=typer.echo)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        _fail(str(e))


@app.command()
@_user_errors
def evaluate(
    run: Path = typer.Option(..., "--run", help="run folder written by meanet train"),
    policy: str = typer.Option("paper", help="paper | calibrated"),
    json_path: Path | None = typer.Option(None, "--json", help="write the report here (default: RUN/eval.json)"),
    plots: Path | None = typer.Option(None, "--plots", help="write PNG plots into this folder"),
    entropy_threshold: float = typer.Option(0.5, help="paper policy: normalised entropy above which to offload"),
    target_cloud_fraction: float = typer.Option(0.1, help="calibrated policy: at most this share offloaded"),
    energy_budget: float | None = typer.Option(None, help="calibrated policy: mean edge joules per image instead"),
    joules_per_mac: float = typer.Option(1e-10, help="edge compute energy per MAC"),
    power_watts: float = typer.Option(
        5.0, help="the device's power draw while computing (stated): the measured energy = seconds x this"
    ),
    uplink_mbps: float = typer.Option(5.64, help="uplink throughput (LTE median, Huang et al. 2012)"),
    batch_size: int = typer.Option(256, min=1, help="images per model call (lowered where memory bounds it)"),
    speed_repeats: int = typer.Option(1, help="timed passes of engine and all-branches (best is kept)"),
    optimize: bool = typer.Option(True, help="fused BatchNorm + channels-last inference copies (same answers, faster)"),
    data_dir: str | None = typer.Option(None, help="folder with cifar100.npz (default: the run's, $MEANET_DATA_DIR)"),
    threads: int | None = typer.Option(None, min=1, help="torch CPU threads"),
) -> None:
    """Run the adaptive inference engine on the test set; write a JSON report and plots."""
    import torch

    from meanet_core.config import TrainConfig, from_dict
    from meanet_core.inference.cost import CostConfig
    from meanet_core.inference.evaluation import evaluate as run_evaluation
    from meanet_core.pipeline import load_splits
    from meanet_core.training.checkpoint import CheckpointError, load_cloud, load_meanet

    if threads:
        torch.set_num_threads(threads)
    if json_path is not None and json_path.is_dir():
        _fail(f"--json {json_path} is a folder; expected a file path, e.g. {json_path / 'eval.json'}")
    if plots is not None and plots.exists() and not plots.is_dir():
        _fail(f"--plots {plots} is a file; expected a folder for the PNG plots")
    try:
        train_json = run / "train.json"
        if not train_json.is_file():
            _fail(f"{train_json} not found: --run must be a folder written by 'meanet train'")
        try:
            summary = json.loads(train_json.read_text())
            cfg = from_dict(TrainConfig, summary["config"])
            trained_size = summary.get("dataset", {}).get("image_size")
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            _fail(
                f"{train_json} is not a train.json written by 'meanet train' ({type(e).__name__}: {e}); "
                "it is damaged or from another tool: retrain into a new --out folder"
            )
        if data_dir is not None:
            cfg = from_dict(TrainConfig, {**cfg.as_dict(), "data_dir": data_dir})
        # Checkpoints record the image size they were trained at; ones that predate that take it from train.json.
        model = load_meanet(run / "meanet.pt", default_input_size=trained_size)
        cloud = load_cloud(run / "cloud.pt", default_input_size=trained_size)
        splits = load_splits(cfg)
        if splits.image_size != model.input_size or splits.image_size != cloud.input_size:
            _fail(
                f"{run}: the models take {model.input_size}x{model.input_size} (edge) and "
                f"{cloud.input_size}x{cloud.input_size} (cloud) images, but its data loads at "
                f"{splits.image_size}x{splits.image_size}; evaluate with the data the run was trained on"
            )
        batch_size = bounded([model, cloud], splits.image_size, batch_size, "--batch-size")  # memory allows it
        cost = CostConfig(joules_per_mac=joules_per_mac, uplink_throughput_mbps=uplink_mbps)
        report = run_evaluation(
            model, cloud, splits.val, splits.test, policy=policy, entropy_threshold=entropy_threshold,
            target_cloud_fraction=target_cloud_fraction, energy_budget_joule=energy_budget, cost=cost,
            batch_size=batch_size, speed_repeats=speed_repeats, optimize=optimize, power_watts=power_watts,
        )  # fmt: skip
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        _fail(str(e))
        return
    report["run"] = str(run)
    json_path = json_path or run / "eval.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2))
    typer.echo(format_report(report))
    typer.echo(f"report: {json_path}")
    if plots is not None:
        from meanet_cli.plots import plot_report

        for p in plot_report(report, plots):
            typer.echo(f"plot: {p}")


def _run_config_overrides(items: list[str]) -> dict[str, object]:
    """``-c KEY=VALUE`` items as run-config overrides: values parsed as TOML (bare words stay strings), keys in
    kebab-case; a key given twice with different values is an error, not a silent last-one-wins."""
    import tomllib

    overrides: dict[str, object] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("_", "-")
        if not sep or not key:
            _fail(f"--config takes KEY=VALUE, e.g. -c experiences=3; got {item!r}")
        try:
            value: object = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        if key in overrides and overrides[key] != value:
            _fail(f"-c {key} is given twice, as {overrides[key]!r} and {value!r}; give it once")
        overrides[key] = value
    return overrides


def format_report(r: dict[str, Any]) -> str:
    ref = r["reference_accuracy"]
    lines = [
        f"policy {r['policy']}",
        f"accuracy {r['accuracy']:.4f}  (main only {ref['main_only']:.4f}, edge main+extension "
        f"{ref['edge_main_plus_extension']:.4f}, cloud only {ref['cloud_only']:.4f})",
        "offloaded inputs: "
        + (
            "none"
            if ref.get("offloaded_edge") is None
            else f"the edge's answer {ref['offloaded_edge']:.4f}, the cloud's {ref['offloaded_cloud']:.4f}"
        ),
        "exits    "
        + "  ".join(
            f"{k} {v['fraction']:.3f} (acc {v['accuracy'] if v['accuracy'] is None else round(v['accuracy'], 4)})"
            for k, v in r["exits"].items()
        ),
        f"MACs/image executed {r['macs_per_image'] / 1e6:.1f}M (edge {r['edge_macs_per_image'] / 1e6:.1f}M), "
        f"all branches {r['macs_all_branches_per_image'] / 1e6:.1f}M, "
        f"cloud only {r['macs_cloud_only_per_image'] / 1e6:.1f}M",
        f"energy/image {r['energy_per_image_joule'] * 1e3:.3f} mJ (MACs model), bytes offloaded/image "
        f"{r['bytes_offloaded_per_image']:.0f}",
        *(
            [
                f"energy/image {r['measured_energy_per_image_joule'] * 1e3:.3f} mJ measured "
                f"({r['energy_models']['measured_energy_per_image_joule']})"
            ]
            if "measured_energy_per_image_joule" in r
            else []
        ),
        f"images/s engine {r['images_per_second']:.1f} vs all branches {r['images_per_second_all_branches']:.1f}: "
        f"speed-up {r['speedup_measured']:.2f}x, MAC-predicted {r['speedup_predicted_by_macs']:.2f}x "
        f"(ratio {r['speedup_ratio_measured_to_predicted']:.2f})",
    ]
    return "\n".join(lines)


@app.command()
@_user_errors
def federate(
    num_clients: int | None = typer.Option(
        None, help="edge clients (SuperNodes); the same as -c num-clients=N (default: the app's, 3)"
    ),
    report_dir: Path | None = typer.Option(
        None,
        help="where report.json, plots and state.pt go; the same as -c report-dir=DIR (default: runs/federation)",
    ),
    deployment: bool = typer.Option(False, help="deployment engine (SuperLink + SuperNodes) instead of simulation"),
    config: list[str] = typer.Option(
        [], "--config", "-c", help="run-config override KEY=VALUE (repeatable; the keys: docs/configuration.md)"
    ),
    timeout: float = typer.Option(3600, help="seconds before the run is abandoned"),
    secure: Path | None = typer.Option(
        None, help="with --deployment: a `meanet certs` folder: TLS, SuperNode authentication, its signing key"
    ),
    fresh: bool = typer.Option(False, help="start over: delete REPORT_DIR/state.pt instead of resuming from it"),
) -> None:
    """Run the federation (cloud ServerApp + edge ClientApps) on a SuperLink started here, and stop it after.

    A report folder holding a ``state.pt`` of the same config resumes where that run stopped; one of another config
    stops here, before anything starts (``--fresh`` or another ``--report-dir`` starts over)."""
    import tomllib

    from fl_server.launch import app_dir, check_quorum, run_deployment, run_simulation
    from meanet_core.config import FederationConfig

    overrides = _run_config_overrides(config)
    # One source of truth per setting: an option and a -c key that say different things stop here.
    if num_clients is not None:
        if "num-clients" in overrides and overrides["num-clients"] != num_clients:
            _fail(
                f"--num-clients {num_clients} and -c num-clients={overrides['num-clients']!r} disagree; "
                "give the number of clients once"
            )
        overrides["num-clients"] = num_clients
    if report_dir is not None:
        given = overrides.get("report-dir")
        if given is not None and Path(str(given)).expanduser().resolve() != report_dir.expanduser().resolve():
            _fail(f"--report-dir {report_dir} and -c report-dir={given!r} disagree; give the report folder once")
        overrides["report-dir"] = str(report_dir.expanduser().resolve())
    elif "report-dir" not in overrides:
        overrides["report-dir"] = str(Path("runs/federation").resolve())
    if not timeout > 0:
        _fail(f"--timeout must be a positive number of seconds; got {timeout}")
    if secure is not None and not deployment:
        _fail("--secure needs --deployment (no SuperNodes connect to the simulation engine)")
    if secure is not None and not secure.is_dir():
        _fail(f"--secure {secure} is not a folder; write one with `meanet certs --out {secure}`")
    defaults = tomllib.loads((app_dir() / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    cfg = FederationConfig.from_run_config({**defaults, **overrides})  # a ConfigError names the bad key
    try:
        check_quorum({**defaults, **overrides}, cfg.num_clients)
    except ValueError as e:
        _fail(f"{e} (or more clients: --num-clients)")
    if cfg.report_path().exists() and not cfg.report_path().is_dir():
        _fail(f"the report folder {cfg.report_path()} is a file; pass --report-dir with a folder")
    from meanet_core.training.checkpoint import CheckpointError, load_server_state

    state = cfg.report_path() / "state.pt"
    if state.is_file() and fresh:
        state.unlink()
        typer.echo(f"--fresh: deleted {state}; starting over")
    elif state.is_file():
        try:
            load_server_state(state, cfg.as_run_config())
        except CheckpointError as e:
            _fail(f"{e}; or pass --fresh")
            return
        typer.echo(f"{state} exists: the run resumes where it stopped (--fresh starts over)")
    import signal
    import sys

    # A SIGTERM (a scheduler, `kill`) unwinds like Ctrl-C, so the SuperLink, SuperNodes and Ray are stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    clients = cfg.num_clients  # validated: the run config's num-clients and the number of SuperNodes are one number
    overrides["num-clients"] = clients
    engine = "deployment engine" if deployment else "simulation engine"
    typer.echo(f"running the federation on Flower's {engine} with {clients} clients; report in {cfg.report_path()}")
    try:
        if deployment:
            run = run_deployment(overrides, clients, timeout=timeout, stream_to_stdout=True, secure=secure)
        else:
            run = run_simulation(overrides, clients, timeout=timeout, stream_to_stdout=True)
    except FileNotFoundError as e:  # an incomplete --secure folder
        _fail(str(e))
        return
    if not run.ok:
        _fail(f"the Flower run {run.run_id} ended {run.status}: {run.details} (Flower home {run.home})")
    summary = cfg.report_path() / "report.md"
    if summary.is_file():
        typer.echo(summary.read_text())
    typer.echo(f"report: {cfg.report_path() / 'report.json'} (tables: {summary}, plots: *.png beside it)")


cloud_app = typer.Typer(help="The cloud offload service (HTTPS) for the edges' complex inputs.", no_args_is_help=True)
app.add_typer(cloud_app, name="cloud")


@cloud_app.command("serve")
@_user_errors
def cloud_serve(
    run: Path | None = typer.Option(
        None, "--run", help="run folder: cloud.pt (meanet train) or state.pt (meanet federate)"
    ),
    watch: Path | None = typer.Option(
        None,
        "--watch",
        help="serving file to follow (a federation's REPORT_DIR/cloud-serving.pt): serve its newest model, "
        "swapped atomically when it changes (polled; SIGHUP reloads at once)",
    ),
    host: str = typer.Option("127.0.0.1", help="address to listen on (0.0.0.0: every interface)"),
    port: int = typer.Option(8443, min=1, max=65535),
    certfile: Path | None = typer.Option(None, help="server certificate (PEM) for TLS"),
    keyfile: Path | None = typer.Option(None, help="its private key (PEM)"),
    ca_certfile: Path | None = typer.Option(None, help="CA of the edges' client certificates: turns on mutual TLS"),
    token: str | None = typer.Option(
        None,
        envvar="MEANET_CLOUD_TOKEN",
        show_envvar=True,
        help="bearer token the edges must send (prefer the env var: a command line shows in ps)",
    ),
    max_batch: int = typer.Option(256, help="images per model call when micro-batching (memory may lower it)"),
    max_wait_ms: float = typer.Option(5.0, help="how long a request waits for others to batch with"),
    micro_batching: bool = typer.Option(True, help="gather concurrent requests into one model call"),
    max_request_images: int = typer.Option(1024, help="larger requests get 413"),
    insecure: bool = typer.Option(
        False, "--insecure", help="allow plain HTTP and/or no client authentication (trusted networks only)"
    ),
    device: str = typer.Option("cpu", help="cpu | cuda"),
    threads: int | None = typer.Option(None, min=1, help="torch CPU threads"),
) -> None:
    """Serve the run's cloud model (or the newest of a serving file) over HTTPS with micro-batching, a bearer token
    and/or mutual TLS."""
    import torch

    from fl_server.offload.handoff import ServedModel, load_cloud_from_run, load_served, prepare
    from fl_server.offload.service import ServiceConfig, check_security, serve
    from meanet_core.training.checkpoint import CheckpointError

    if threads:
        torch.set_num_threads(threads)
    if watch is not None:  # a swap is news: "info: now serving ... version N" (warnings already print)
        cloud_log = logging.getLogger("meanet.cloud")
        cloud_log.setLevel(logging.INFO)
        info = _EchoHandler(logging.INFO)
        info.addFilter(lambda record: record.levelno < logging.WARNING)
        cloud_log.addHandler(info)
    try:
        torch.device(device)
    except RuntimeError:
        _fail(f"--device {device!r} is not a torch device; expected cpu, cuda or cuda:N")
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        _fail(f"--device {device}: this machine has no CUDA device torch can use; pass --device cpu")
    try:
        config = ServiceConfig(
            max_batch=max_batch, max_wait_ms=max_wait_ms, micro_batching=micro_batching,
            max_request_images=max_request_images, max_pending_images=max(8192, max_request_images), token=token,
        )  # fmt: skip
        check_security(certfile=certfile, token=token, ca_certfile=ca_certfile, insecure=insecure)
        served: ServedModel
        if watch is not None and watch.is_file():  # the serving file is the newest model
            served = load_served(watch, device)
        elif run is not None:
            served = prepare(load_cloud_from_run(run), device, source=str(run))
        elif watch is not None:
            raise ValueError(
                f"--watch {watch} does not exist yet: start the federation first (it writes the file after the "
                "first cloud training), or pass --run too to serve that run's model until the file appears"
            )
        else:
            raise ValueError("pass --run RUN_DIR (a run's cloud model) and/or --watch FILE (a serving file)")
    except (CheckpointError, ValueError) as e:
        _fail(str(e))
        return
    # A model call (a micro-batch or one large request) stays within memory; the edges read max-request-images.
    most = bounded([served.cloud.model], served.input_size, max(max_batch, max_request_images), "--max-batch")
    config = dataclasses.replace(
        config, max_batch=min(max_batch, most), max_request_images=min(max_request_images, most)
    )  # fmt: skip
    scheme = "https" if certfile else "http"
    auth = " + ".join(a for a, on in (("bearer token", token), ("mutual TLS", ca_certfile)) if on) or "none"
    batching = f"up to {config.max_batch} images or {max_wait_ms:g} ms" if micro_batching else "off"
    following = f"; following {watch}" if watch is not None else ""
    typer.echo(
        f"serving {served.arch} version {served.version} from {served.source} on {scheme}://{host}:{port} "
        f"(auth: {auth}; micro-batching {batching}{following})"
    )
    try:
        serve(
            served, host=host, port=port, certfile=certfile, keyfile=keyfile, ca_certfile=ca_certfile, config=config,
            insecure=insecure, device=device, watch=watch,
        )  # fmt: skip
    except (ValueError, FileNotFoundError) as e:
        _fail(str(e))


app.command("export")(_user_errors(export_model))
edge_app = typer.Typer(help="On an edge device: adaptive inference outside federation rounds.", no_args_is_help=True)
app.add_typer(edge_app, name="edge")
edge_app.command("predict")(_user_errors(edge_predict))
edge_app.command("bench")(_user_errors(edge_bench))


@app.command()
@_user_errors
def models() -> None:
    """List the registered MEANet and cloud models with parameters and MACs per image."""
    import torch

    from meanet_core.models import (
        CLOUD_ARCHS,
        MEANET_ARCHS,
        build_cloud,
        build_meanet,
        describe_cloud,
        describe_meanet,
    )

    meta = torch.device("meta")  # shapes only: MACs are counted without computing anything
    typer.echo("MEANet edge models (main / adaptive / extension, 20% hard classes of 100):")
    for name, spec in MEANET_ARCHS.items():
        with meta:
            blocks = describe_meanet(build_meanet(name, 100, list(range(20))))
        parts = ", ".join(f"{b.name} {b.params / 1e6:.2f}M params {b.macs / 1e6:.1f}M MACs" for b in blocks)
        typer.echo(f"  {name:<18} {spec.input_size}px  {parts}")
    typer.echo("cloud models:")
    for name, spec in CLOUD_ARCHS.items():
        with meta:
            b = describe_cloud(build_cloud(name, 100))
        typer.echo(f"  {name:<18} {spec.input_size}px  {b.params / 1e6:.2f}M params {b.macs / 1e6:.1f}M MACs")


@app.command()
@_user_errors
def certs(
    out: Path = typer.Option(..., "--out", help="folder for the certificates and keys"),
    host: str = typer.Option(
        "localhost,127.0.0.1,::1", help="comma list of host names / IP addresses of the SuperLink (and cloud service)"
    ),
    supernodes: int = typer.Option(2, help="SuperNode authentication key pairs to make (supernode-I.key/.pub)"),
    days: int = typer.Option(365, help="validity of the certificates"),
    force: bool = typer.Option(False, "--force", help="overwrite files already in --out"),
) -> None:
    """Write a CA, TLS certificates, SuperNode auth keys and the broadcast signing key for a secure deployment."""
    from meanet_core.trust.certs import CertsError, write_deployment_keys

    try:
        written = write_deployment_keys(out, hosts=_csv(host, "host"), supernodes=supernodes, days=days, force=force)
    except CertsError as e:
        _fail(str(e))
        return
    d = written.out
    typer.echo(f"wrote into {d} (private keys mode 0600):")
    typer.echo(f"  TLS: ca.pem, server.pem + server.key (for {host}), client.pem + client.key (offload mTLS)")
    typer.echo(f"  SuperNode auth keys (ECDSA P-384, OpenSSH): supernode-0..{supernodes - 1}.key/.pub")
    typer.echo("  broadcast signing: broadcast-signing.key (the cloud's) + broadcast-signing.pub (pinned by the edges)")
    typer.echo(
        f"SuperLink: flower-superlink --host 0.0.0.0 --ssl-ca-certfile {d}/ca.pem --ssl-certfile {d}/server.pem "
        f"--ssl-keyfile {d}/server.key --enable-supernode-auth"
    )
    typer.echo(f"then for each SuperNode I: flwr supernode register {d}/supernode-I.pub CONNECTION")
    typer.echo(
        f"SuperNode I: flower-supernode --root-certificates {d}/ca.pem --auth-supernode-private-key "
        f"{d}/supernode-I.key --superlink HOST:8000 "
        f"--node-config 'partition-id=I num-partitions=N verify-key=\"{d}/broadcast-signing.pub\"'"
    )
    typer.echo(
        f'run config of the cloud: signing-key="{d}/broadcast-signing.key"'
        ' (docs/deployment.md, "Secure deployment by hand")'
    )


app.add_typer(bench_app, name="bench")


if __name__ == "__main__":
    app()
