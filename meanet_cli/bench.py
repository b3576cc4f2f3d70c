"""``meanet bench``: benchmarks, continual learning (Avalanche) and personalised FL, with baselines side by side."""

from __future__ import annotations

from pathlib import Path

import typer

from meanet_cli.errors import comma_list as _csv
from meanet_cli.errors import fail as _fail
from meanet_cli.errors import user_errors as _user_errors

bench_app = typer.Typer(
    help="Benchmarks: continual learning (Avalanche) and personalised FL, with baselines side by side.",
    no_args_is_help=True,
)


@bench_app.command("continual")
@_user_errors
def bench_continual(
    out: Path = typer.Option(..., "--out", help="folder for results.json, results.md, the plots and checkpoints"),
    scenario: str = typer.Option(
        "split-cifar100", help="split-cifar100 | drift-cifar100 (tiny: split-cifar100-mini, split-digits, ...)"
    ),
    experiences: int = typer.Option(10, help="experiences in the stream"),
    methods: str = typer.Option("all", help="comma list of methods, or all (see the table in the docs)"),
    clients: int = typer.Option(3, help="simulated edge clients per experience"),
    partition: str = typer.Option("iid", help="iid | dirichlet: how each experience is split over the clients"),
    alpha: float = typer.Option(0.5, help="Dirichlet concentration (small = skewed)"),
    epochs: int = typer.Option(1, help="training epochs per experience, the same for every method"),
    seeds: str = typer.Option("0", help="comma list of seeds, e.g. 0,1,2: the report gives mean ± std"),
    limit_train: int | None = typer.Option(None, help="a seeded subset of this many training images"),
    limit_test: int | None = typer.Option(None, help="at most this many test images per experience"),
    target_cloud_fraction: float = typer.Option(0.2, help="MEANet routing: at most this share offloaded"),
    cloud_share: float = typer.Option(0.3, help="share of each experience's images that the cloud receives"),
    model: str = typer.Option("resnet20_cifar", help="edge backbone for every method"),
    cloud_model: str = typer.Option("resnet32_cifar", help="cloud model (cloud-only and MEANet)"),
    batch_size: int = typer.Option(64),
    lr: float = typer.Option(0.05, help="peak learning rate (one-cycle) of every training stage"),
    edge_lr: float = typer.Option(0.01, help="peak learning rate of the edges' fine-tuning"),
    main_rounds: int = typer.Option(
        1, help="main rounds per experience of meanet-fl-main-* (the edges train the main block; 0: none)"
    ),
    cloud_epochs: int | None = typer.Option(
        None, help="the cloud model's epochs per experience (default: --epochs): its compute advantage"
    ),
    cloud_lr: float | None = typer.Option(None, help="the cloud model's peak learning rate (default: --lr)"),
    cloud_init: str = typer.Option(
        "scratch",
        help="MEANet-FL's cloud model: scratch | main (grown from the main block at the first experience) "
        "| main-every (at every experience)",
    ),
    cloud_distill: float = typer.Option(
        0.0, help="MEANet-FL's cloud model distils the main block's logits with this weight (0: off)"
    ),
    extension_epochs: int | None = typer.Option(
        None, help="the extension's epochs, at the cloud and in the edge round (default: --epochs)"
    ),
    extension_distill: float = typer.Option(
        0.0, help="the extension distils the cloud model's hard-class logits with this weight (0: off)"
    ),
    hard_method: str = typer.Option(
        "precision", help="how MEANet picks its hard classes: precision | confusion | cluster (confused together)"
    ),
    hard_candidates: str = typer.Option("seen", help="hard classes among the seen ones | new (this experience's)"),
    hard_fraction: float = typer.Option(0.2, help="share of the candidate classes that are hard"),
    offload_labels: int = typer.Option(
        0, help="MEANet-FL: per experience, label this many of the edges' least confident images at the cloud"
    ),
    upload_encoding: str = typer.Option(
        "int8", help="MEANet-FL uploads, as the federation's upload-encoding: int4 | int8 | fp16 | float32"
    ),
    broadcast_encoding: str = typer.Option(
        "full",
        help="MEANet-FL downloads: full (the state each round) | int6 | int8 | float32 (the change from what the "
        "edges hold, as the federation's broadcast-encoding)",
    ),
    precision: str = typer.Option(
        "auto", help="fp32 | bf16 (bfloat16 autocast: faster where native) | auto (bf16 where the CPU has it natively)"
    ),
    data_dir: str | None = typer.Option(None, help="folder with cifar100.npz (default: $MEANET_DATA_DIR)"),
    progress: bool = typer.Option(True, help="progress bars"),
    threads: int | None = typer.Option(None, min=1, help="torch CPU threads"),
    quick: bool = typer.Option(
        False, "--quick", help="every method on a small seeded subset of the images (about 10 min on 2 cores)"
    ),
) -> None:
    """Run continual-learning methods on one scenario, side by side; write a JSON, a markdown table and plots."""
    import torch

    from benchmarks.continual.config import METHODS, QUICK, BenchConfig, BenchConfigError
    from benchmarks.continual.runner import run_benchmark

    if threads:
        torch.set_num_threads(threads)
    if quick:
        limit_train = QUICK["limit_train"] if limit_train is None else limit_train
        limit_test = QUICK["limit_test"] if limit_test is None else limit_test
        typer.echo(
            f"quick mode: --limit-train {limit_train} --limit-test {limit_test} (a seeded subset of the images, the "
            "same stream, methods and schedule): a check that every method runs and a first look in about 10 "
            "minutes on 2 cores, not the numbers of the full benchmark (drop --quick for those)"
        )
    names = list(METHODS) if methods.strip() == "all" else _csv(methods, "methods")
    try:
        seed_list = tuple(int(s) for s in _csv(seeds, "seeds"))
    except ValueError:
        _fail(f"--seeds takes comma-separated integers such as 0,1,2; got {seeds!r}")
        return
    try:
        cfg = BenchConfig(
            scenario=scenario, experiences=experiences, methods=tuple(names), seeds=seed_list, clients=clients,
            partition=partition, alpha=alpha, epochs=epochs, limit_train=limit_train, limit_test=limit_test,
            target_cloud_fraction=target_cloud_fraction, cloud_share=cloud_share, model=model,
            cloud_model=cloud_model, batch_size=batch_size, lr=lr, edge_lr=edge_lr, main_rounds=main_rounds,
            cloud_epochs=cloud_epochs, cloud_lr=cloud_lr, cloud_init=cloud_init, cloud_distill=cloud_distill,
            extension_epochs=extension_epochs, extension_distill=extension_distill, offload_labels=offload_labels,
            hard_method=hard_method, hard_candidates=hard_candidates, hard_fraction=hard_fraction,
            upload_encoding=upload_encoding, broadcast_encoding=broadcast_encoding,
            precision=precision,
            data_dir=data_dir,
        )  # fmt: skip
        run_benchmark(cfg, out, progress=progress, log=typer.echo)
    except (BenchConfigError, ValueError, FileNotFoundError) as e:
        _fail(str(e))
        return
    typer.echo((out / "results.md").read_text())


@bench_app.command("personal")
@_user_errors
def bench_personal(
    out: Path = typer.Option(..., "--out", help="folder for results.json, results.md, the plots and checkpoints"),
    methods: str = typer.Option("all", help="comma list of methods, or all (see docs/benchmarks.md)"),
    seeds: str = typer.Option("0", help="comma list of seeds, e.g. 0,1,2: the table gives mean ± std"),
    dataset: str | None = typer.Option(None, help="cifar100 (default) | cifar100-mini"),
    edges: int | None = typer.Option(None, help="devices in the fleet (default 20)"),
    partition: str = typer.Option("dirichlet", help="dirichlet (label skew by beta) | classes (k classes per edge)"),
    beta: float = typer.Option(0.5, help="Dirichlet concentration (0.1 skewed, 5 near IID)"),
    classes_per_edge: int = typer.Option(5, help="classes per edge with --partition classes"),
    limit_train: int | None = typer.Option(
        None, help="a seeded, stratified subset of the training images (default 10000; 0: all 50,000)"
    ),
    cloud_share: float = typer.Option(0.1, help="share of the training images the server holds (IID)"),
    val_fraction: float = typer.Option(0.15, help="share of each edge's images carved into its validation split"),
    test_per_edge: int | None = typer.Option(None, help="test images per edge, in its class proportions (200)"),
    model: str = typer.Option("resnet20_cifar", help="backbone of every method (the MEANet's main block)"),
    rounds: int | None = typer.Option(None, help="federated rounds (default 30)"),
    local_epochs: int = typer.Option(1, help="local epochs per round (local-only: the same total per device)"),
    edges_per_round: int | None = typer.Option(None, help="edges sampled per round (default 10)"),
    batch_size: int = typer.Option(32),
    lr: float = typer.Option(0.05, help="peak learning rate (one one-cycle schedule over the rounds)"),
    server_epochs: int | None = typer.Option(None, help="warm start on the server-held share, epochs (default 5)"),
    ft_epochs: int | None = typer.Option(None, help="local fine-tuning epochs of fedavg-ft and fedbabu (default 5)"),
    head_epochs: int = typer.Option(1, help="FedRep: head epochs per round before the body's"),
    babu_ft: str = typer.Option("whole", help="FedBABU's fine-tuning: whole | head"),
    ditto_lambda: float = typer.Option(0.1, help="Ditto: pull of the personal model towards the global one"),
    hard_fraction: float = typer.Option(0.5, help="MEANet-FL rows: share of a device's classes that are hard"),
    extension_epochs: int = typer.Option(15, help="MEANet-FL rows: epochs of the extension on the hard classes"),
    extension_lr: float = typer.Option(0.1, help="MEANet-FL rows: the extension's peak learning rate"),
    precision: str = typer.Option("auto", help="fp32 | bf16 | auto (bf16 where the CPU has it natively)"),
    data_dir: str | None = typer.Option(None, help="folder with cifar100.npz (default: $MEANET_DATA_DIR)"),
    progress: bool = typer.Option(True, help="progress bars"),
    threads: int | None = typer.Option(None, min=1, help="torch CPU threads"),
    quick: bool = typer.Option(
        False, "--quick", help="a seconds-scale smoke run on CIFAR-100 mini (not numbers to read)"
    ),
) -> None:
    """Personalised FL on a label-skewed fleet: MEANet-FL personal and global beside FedAvg, FedAvg + fine-tuning,
    FedPer, FedRep, FedBABU, Ditto and local-only, each device scored on its own test split; write a JSON, a markdown
    table and plots."""
    import torch

    from benchmarks.personal.config import QUICK, PersonalConfig
    from benchmarks.personal.methods import METHODS
    from benchmarks.personal.runner import run_benchmark

    if threads:
        torch.set_num_threads(threads)
    given: dict[str, object] = {
        "dataset": dataset, "edges": edges, "test_per_edge": test_per_edge, "rounds": rounds,
        "edges_per_round": edges_per_round, "server_epochs": server_epochs, "ft_epochs": ft_epochs,
        "limit_train": limit_train,
    }  # fmt: skip
    preset = QUICK if quick else {}
    values = {k: v if v is not None else preset.get(k) for k, v in given.items()}
    values = {k: v for k, v in values.items() if v is not None}
    if values.get("limit_train") == 0:
        values["limit_train"] = None
    if quick:
        typer.echo("quick mode: " + ", ".join(f"{k}={v}" for k, v in QUICK.items() if given[k] is None))
    names = list(METHODS) if methods.strip() == "all" else _csv(methods, "methods")
    try:
        seed_list = tuple(int(s) for s in _csv(seeds, "seeds"))
    except ValueError:
        _fail(f"--seeds takes comma-separated integers such as 0,1,2; got {seeds!r}")
        return
    cfg = PersonalConfig.from_dict(
        {
            **values, "methods": names, "seeds": seed_list, "partition": partition, "beta": beta,
            "classes_per_edge": classes_per_edge, "cloud_share": cloud_share, "val_fraction": val_fraction,
            "model": model, "local_epochs": local_epochs, "batch_size": batch_size, "lr": lr,
            "head_epochs": head_epochs, "babu_ft": babu_ft, "ditto_lambda": ditto_lambda, "precision": precision,
            "hard_fraction": hard_fraction, "extension_epochs": extension_epochs, "extension_lr": extension_lr,
            "data_dir": data_dir,
        }
    )  # fmt: skip
    run_benchmark(cfg, out, progress=progress, log=typer.echo)
    typer.echo((out / "results.md").read_text())
