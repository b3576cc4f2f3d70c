"""The federation report: JSON with every number, and PNG plots of accuracy, exits and bytes per round/experience."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import matplotlib

from meanet_core import keys

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def busy_seconds(intervals: list[tuple[float, float]] | list[list[float]]) -> float:
    """Length of the union of ``(start, end)`` intervals: the time during which at least one edge was training."""
    total, end = 0.0, float("-inf")
    for a, b in sorted((float(a), float(b)) for a, b in intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def round_record(
    strategy: Any, earlier: list[dict[str, Any]], e: int, phase: str, rnd: int, round_start: float, full_bytes: int
) -> dict[str, Any]:
    """What one training round cost and did: ``strategy``'s round report (a :class:`~strategies.MEANetStrategy`),
    timings, bytes each way; ``earlier`` is the run's earlier round records."""
    info: dict[str, Any] = dict(strategy.last_round or {})
    info.pop("main_digests", {})
    slowest = max(info.get("client_train_seconds") or [0.0])
    intervals = info.get("client_train_intervals") or []
    local = busy_seconds(intervals) if intervals else slowest
    record = {
        "experience": e,
        "phase": phase,  # "main": the edges trained the main block; "edge": adaptive + extension
        "round": rnd,
        "wall_seconds": time.perf_counter() - round_start,
        "local_training_seconds": local,  # time during which at least one edge was training
        "slowest_edge_training_seconds": slowest,
        "overhead_seconds": info.get("train_phase_seconds", 0.0) - local,  # messaging, model loading, waiting
        **info,
        "participation": participation(earlier, info),  # clients trained / missed / rejoined
        "bytes_broadcast_per_client": strategy.bytes_sent.get("train", 0.0),
        "full_state_bytes": full_bytes,
        # the cloud's time to build the round's broadcast (the change, and the state the edges rebuild from it)
        "broadcast_seconds": strategy.broadcast_seconds.pop("train", 0.0),
    }
    # Full-model FedAvg would upload (and download) the whole MEANet state every round.
    record["upload_ratio_vs_full_model"] = record.get("bytes_received_per_client", 0.0) / max(1, full_bytes)
    record["download_ratio_vs_full_state"] = record["bytes_broadcast_per_client"] / max(1, full_bytes)
    return record


def write_report(report: dict[str, Any], out: Path) -> list[Path]:
    """Write ``report.json`` and the plots into ``out``; returns the paths, the JSON first."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "report.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(path)
    md = out / "report.md"
    md.write_text(markdown_summary(report))
    paths = [path, md]
    evaluated = [x for x in report["experiences"] if "evaluation" in x]
    if evaluated:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
        xs = [x["experience"] for x in evaluated]
        for key, label in [
            ("meanet_with_cloud", "MEANet (edge + cloud)"),
            ("edge_main_plus_extension", "edge (main + extension)"),
            ("main_only", "main block only"),
            ("cloud_only", "cloud only"),
        ]:
            ax1.plot(xs, [x["evaluation"]["reference_accuracy"][key] for x in evaluated], marker="o", label=label)
        ax1.set_xlabel("experience")
        ax1.set_ylabel("test accuracy (seen classes)")
        ax1.set_xticks(xs)
        ax1.legend(fontsize=8)
        ax1.set_title("Accuracy per experience")
        bottom = [0.0] * len(xs)
        for name, color in [("main", "#4C72B0"), ("extension", "#DD8452"), ("cloud", "#55A868")]:
            vals = [x["evaluation"]["exits"][name]["fraction"] for x in evaluated]
            ax2.bar(xs, vals, bottom=bottom, label=name, color=color)
            bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
        ax2.set_xlabel("experience")
        ax2.set_ylabel("fraction of test images")
        ax2.set_xticks(xs)
        ax2.legend(fontsize=8)
        ax2.set_title("Where inference ends")
        paths.append(_save(fig, out / "experiences.png"))
    rounds = report["rounds"]
    if rounds:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
        idx = list(range(1, len(rounds) + 1))
        labels = [f"e{r['experience']}{'m' if r.get('phase') == 'main' else 'r'}{r['round']}" for r in rounds]
        evals = [r.get("client_evaluation", {}) for r in rounds]
        for key, label in [("accuracy", "accuracy"), ("exit-cloud", "cloud fraction"), ("exit-extension", "extension")]:
            ax1.plot(idx, [ev.get(key, float("nan")) for ev in evals], marker="o", label=label)
        ax1.set_xticks(idx, labels, rotation=45, fontsize=7)
        ax1.set_title("Edge evaluation per round (weighted over clients)")
        ax1.legend(fontsize=8)
        up = [r.get("bytes_received_per_client", 0) / 1e6 for r in rounds]
        down = [(r.get("bytes_broadcast_per_client", 0) + r.get("bytes_evaluate_per_client", 0)) / 1e6 for r in rounds]
        ax2.bar([i - 0.2 for i in idx], down, width=0.4, label="sent to each client (training + evaluation)")
        ax2.bar([i + 0.2 for i in idx], up, width=0.4, label="received from each client")
        ax2.set_xticks(idx, labels, rotation=45, fontsize=7)
        ax2.set_ylabel("MB")
        ax2.set_title("Bytes per client per round")
        ax2.legend(fontsize=8)
        paths.append(_save(fig, out / "rounds.png"))
    return paths


def _cloud_training(config: dict[str, Any]) -> str:
    """How the run's cloud model was trained, in words (from its config)."""
    epochs = config.get("cloud-model-epochs") or config.get("cloud-epochs", 1)
    lr = config.get("cloud-model-lr") or config.get("lr")
    grown = {
        "main": "grown from the main block at the first experience, then ",
        "main-every": "grown from the main block at every experience, then ",
    }
    text = grown.get(str(config.get("cloud-init", "scratch")), "")
    text += f"trained on the cloud images ({epochs} epoch(s) per experience, lr {lr}"
    if config.get("cloud-distill"):
        text += f", distilling the main block with weight {config['cloud-distill']}"
    return text + ")"


def training_budget(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Per experience: the images the cloud's stages and the edges trained on (epochs x images) and the forward
    MACs that took (images x the MACs per image of what each stage runs). The edges' images are the example counts
    they reported (as aggregated) times their epochs per round."""
    config = report.get("config", {})
    main_epochs = int(config.get("local-epochs", 1))
    edge_epochs = int(config.get("extension-epochs") or main_epochs)
    out = []
    for x in report["experiences"]:
        macs = x.get("training_macs_per_image")
        if not macs or "cloud_trained_images" not in x:
            continue
        cloud = x["cloud_trained_images"]
        edges = {"main": 0.0, "extension": 0.0}
        for r in report["rounds"]:
            if r["experience"] == x["experience"]:
                main = r.get("phase", "edge") == "main"
                edges["main" if main else "extension"] += r.get("num_examples", 0.0) * (
                    main_epochs if main else edge_epochs
                )
        out.append(
            {
                "experience": x["experience"],
                "cloud_images": sum(cloud.values()),
                "cloud_macs": sum(n * macs[stage] for stage, n in cloud.items()),
                "edge_images": sum(edges.values()),
                "edge_macs": sum(n * macs[stage] for stage, n in edges.items()),
                "cloud_model_images": cloud.get("cloud_model", 0),
            }
        )
    return out


def training_budget_table(report: dict[str, Any]) -> list[str]:
    """Markdown lines of :func:`training_budget` (none for reports that predate it)."""
    rows = training_budget(report)
    if not rows:
        return []
    lines = [
        "",
        "| experience | cloud: images trained | cloud: TMAC | of which the cloud model (images) "
        "| edges: images trained "
        "| edges: TMAC |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for b in rows:
        lines.append(
            f"| {b['experience']} | {b['cloud_images']:,.0f} | {b['cloud_macs'] / 1e12:.2f} "
            f"| {b['cloud_model_images']:,.0f} | {b['edge_images']:,.0f} | {b['edge_macs'] / 1e12:.2f} |"
        )
    lines += [
        "",
        "Training budget: images trained (epochs x images) and forward MACs (images x the MACs per image of what each "
        "stage runs: the main block; main + adaptive + extension; the cloud model) by the cloud's stages and by all "
        "the edges together (the example counts they reported, times their epochs per round).",
    ]
    return lines


def hard_class_table(report: dict[str, Any]) -> list[str]:
    """Markdown lines: per experience, accuracy on the test inputs whose true class is hard (main block alone, main +
    extension, the edge as the policy ran it); none for reports that predate it."""
    rows = [x for x in report["experiences"] if "hard_classes" in x.get("evaluation", {})]
    if not rows:
        return []
    lines = [
        "",
        "| experience | hard-class test inputs | main only | main + extension | edge as run | extension kept |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    for x in rows:
        h = x["evaluation"]["hard_classes"]
        cells = ["-" if h[k] is None else f"{h[k]:.4f}" for k in ("main_only", "main_plus_extension", "edge_as_run")]
        kept = "yes" if x["evaluation"].get("policy", {}).get("use_extension", True) else "no (validation gate)"
        lines.append(f"| {x['experience']} | {h['inputs']} | " + " | ".join(cells) + f" | {kept} |")
    lines += [
        "",
        "On the test inputs whose true class is hard: the main block alone, main + extension (every hard top-1 "
        "answered by the extension) and the edge as the calibrated policy ran it (the extension only where it "
        "scored higher on the cloud's validation images).",
    ]
    return lines


def _offloaded(ref: dict[str, Any]) -> str:
    """``edge / cloud`` accuracy on the offloaded inputs; ``-`` when nothing was offloaded (or an older report)."""
    edge, cloud = ref.get("offloaded_edge"), ref.get("offloaded_cloud")
    return "-" if edge is None or cloud is None else f"{edge:.3f} / {cloud:.3f}"


def markdown_summary(report: dict[str, Any]) -> str:
    """Markdown tables: accuracy and exits per experience (with chance and the data behind each column); time and
    bytes per round; bytes per kind of round; each edge's evaluation."""
    config = report.get("config", {})
    main_rounds = int(config.get("main-rounds", 0))
    lines = [
        "| experience | seen classes | chance | cloud images | edge images | cloud training s | MEANet + cloud "
        "| edge (main + ext) | main only | cloud only | exit main | exit extension | exit cloud "
        "| offloaded: edge / cloud |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for x in report["experiences"]:
        ev = x.get("evaluation")
        if ev is None:
            continue
        ref, ex = ev["reference_accuracy"], ev["exits"]
        lines.append(
            f"| {x['experience']} | {x['seen_classes']} | {1 / x['seen_classes']:.4f} | {x['cloud_images']} "
            f"| {sum(x.get('edge_images', []))} | {x['cloud_training_seconds']:.0f} "
            f"| {ev['accuracy']:.4f} | {ref['edge_main_plus_extension']:.4f} | {ref['main_only']:.4f} "
            f"| {ref['cloud_only']:.4f} | {ex['main']['fraction']:.3f} | {ex['extension']['fraction']:.3f} "
            f"| {ex['cloud']['fraction']:.3f} | {_offloaded(ref)} |"
        )
    edge_seen = (
        f" and on the edges' images of the experience in {main_rounds} main round(s) (their own data, "
        f"{config.get('local-epochs', 1)} local epoch(s) each; the cloud's epochs come first at the first experience, "
        "last after it)"
        if main_rounds
        else ""
    )
    lines += [
        "",
        "Accuracy on the test images of the classes seen so far (chance = 1 / seen classes). *main only*: the main "
        f"block, trained on the cloud images ({config.get('cloud-epochs', 1)} epoch(s) over everything the cloud "
        f"holds){edge_seen}. *edge (main + ext)*: the main block, and the extension for the hard classes, never "
        "offloading (the extension trained on the hard-class images of the cloud, then of the edges; where the "
        "calibrated policy found the main block better on the hard top-1s of the validation images, it drops the "
        "extension and this is the main block). *cloud only*: "
        f"the cloud model ({config.get('cloud-model', '?')}) on every input, {_cloud_training(config)}. "
        "*MEANet + cloud*: the adaptive engine, offloading the inputs the edge is not confident on (exit cloud). "
        "*offloaded: edge / cloud*: on those inputs, the accuracy of the edge's own answer and of the cloud's (the "
        "cloud pays for itself where the second is higher; MEANet + cloud - edge = exit cloud x the difference)."
        + (
            f" The cloud trained at {report['training_precision']} (precision {config.get('precision')!r}; each edge "
            "resolves 'auto' on its own machine)."
            if "training_precision" in report
            else ""
        ),
    ]
    lines += hard_class_table(report)
    lines += training_budget_table(report)
    staged = [x for x in report["experiences"] if "after_main_rounds" in x.get("main_val_accuracy", {})]
    if staged:
        lines += [
            "",
            "| experience | main block on validation: after the cloud's epochs (everything it holds) "
            "| after the main rounds (the edges' images) | last |",
            "|---:|---:|---:|---|",
        ]
        for x in staged:
            acc = x["main_val_accuracy"]
            after = acc.get("after_cloud")
            last = x.get("main_stages", ["-"])[-1]  # the order the server ran them in
            lines.append(
                f"| {x['experience']} | {'-' if after is None else f'{after:.4f}'} | {acc['after_main_rounds']:.4f} "
                f"| {last} |"
            )
    lines += [
        "",
        "| experience | phase | round | wall s | local training s | overhead s | aggregation s | client evaluation s "
        "| uploaded B/client | upload / full model | training broadcast B/client | download / full state "
        "| evaluation broadcast B/client | edge accuracy |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rounds"]:
        acc = r.get("client_evaluation", {}).get("accuracy")
        aggregation = r.get("aggregation_seconds", 0.0)
        evaluation = r.get(
            "client_evaluation_seconds", r["wall_seconds"] - r.get("train_phase_seconds", 0.0) - aggregation
        )
        lines.append(
            f"| {r['experience']} | {r.get('phase', 'edge')} | {r['round']} | {r['wall_seconds']:.1f} "
            f"| {r['local_training_seconds']:.1f} | {r['overhead_seconds']:.1f} | {aggregation:.2f} | {evaluation:.1f} "
            f"| {r.get('bytes_received_per_client', 0):,.0f} | {r['upload_ratio_vs_full_model']:.3f} "
            f"| {r['bytes_broadcast_per_client']:,.0f} | {r.get('download_ratio_vs_full_state', 1.0):.3f} "
            f"| {r.get('bytes_evaluate_per_client', 0):,.0f} | {'-' if acc is None else f'{acc:.4f}'} |"
        )
    lines += bytes_by_phase_table(report["rounds"])
    lines += communication_table(report["rounds"])
    lines += participation_table(report["rounds"])
    lines += per_edge_table(report["rounds"])
    lines += per_device_table(report)
    if "wall_seconds" in report:
        lines += ["", f"Whole run: {report['wall_seconds']:.0f} s."]
    return "\n".join(lines) + "\n"


def bytes_by_phase(rounds: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per kind of round (``main``: the edges trained the main block; ``edge``: adaptive + extension): the rounds
    run and the bytes each client received (training + evaluation instructions) and sent, summed over the run."""
    out: dict[str, dict[str, float]] = {}
    for r in rounds:
        row = out.setdefault(r.get("phase", "edge"), {"rounds": 0, "down_per_client": 0.0, "up_per_client": 0.0})
        row["rounds"] += 1
        row["down_per_client"] += r.get("bytes_broadcast_per_client", 0.0) + r.get("bytes_evaluate_per_client", 0.0)
        row["up_per_client"] += r.get("bytes_received_per_client", 0.0)
    return out


def bytes_by_phase_table(rounds: list[dict[str, Any]]) -> list[str]:
    """Markdown lines of :func:`bytes_by_phase`."""
    phases = bytes_by_phase(rounds)
    if not phases:
        return []
    lines = ["", "| kind of round | rounds | down B/client | up B/client |", "|---|---:|---:|---:|"]
    for phase, row in sorted(phases.items()):
        name = "main (edges train the main block)" if phase == "main" else "edge (adaptive + extension)"
        lines.append(f"| {name} | {row['rounds']:.0f} | {row['down_per_client']:,.0f} | {row['up_per_client']:,.0f} |")
    return lines


def communication(rounds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per experience, what each edge received and sent, beside what FedAvg of the whole model would have moved in
    the same rounds (the full float32 state down and up every training round, and down every evaluated round).

    ``down`` counts the MEANet's training and evaluation broadcasts; ``cloud_model_down`` the cloud model that rides
    with a simulation's evaluation broadcast (a deployment's edges call the offload service instead). ``max_upload``
    is the largest upload of the experience over the full state; ``max_later_download`` the largest training or
    evaluation broadcast after the experience's first round.
    """
    out: dict[int, dict[str, Any]] = {}
    for r in rounds:
        full = float(r.get("full_state_bytes") or 0) or 1.0
        row = out.setdefault(
            r["experience"],
            {"experience": r["experience"], "rounds": 0, "evaluated_rounds": 0, "down": 0.0, "cloud_model_down": 0.0,
             "up": 0.0, "fedavg_full": 0.0, "max_upload": 0.0, "max_later_download": 0.0, "full_state_bytes": full},
        )  # fmt: skip
        cloud = r.get("bytes_cloud_model_per_client", 0.0)
        train_down, eval_down = r.get("bytes_broadcast_per_client", 0.0), r.get("bytes_evaluate_per_client", 0.0)
        up = r.get("bytes_received_per_client", 0.0)
        evaluated = eval_down > 0
        row["rounds"] += 1
        row["evaluated_rounds"] += int(evaluated)
        row["down"] += train_down + eval_down - cloud
        row["cloud_model_down"] += cloud
        row["up"] += up
        row["fedavg_full"] += full * (2 + int(evaluated))
        row["max_upload"] = max(row["max_upload"], up / full)
        later = [eval_down - cloud] + ([train_down] if row["rounds"] > 1 else [])
        row["max_later_download"] = max(row["max_later_download"], max(later) / full)
    for row in out.values():
        row["ratio_vs_fedavg_full"] = (row["down"] + row["up"]) / max(1.0, row["fedavg_full"])
    return [out[e] for e in sorted(out)]


def communication_table(rounds: list[dict[str, Any]]) -> list[str]:
    """Markdown lines of :func:`communication`."""
    rows = communication(rounds)
    if not rows:
        return []
    lines = [
        "",
        "Bytes per edge and experience, both ways, against FedAvg of the whole float32 model in the same rounds:",
        "",
        "| experience | rounds (evaluated) | down B | up B | FedAvg-full B | ratio | largest upload / full "
        "| largest later download / full | cloud model down B (simulation) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for x in rows:
        lines.append(
            f"| {x['experience']} | {x['rounds']} ({x['evaluated_rounds']}) | {x['down']:,.0f} | {x['up']:,.0f} "
            f"| {x['fedavg_full']:,.0f} | {x['ratio_vs_fedavg_full']:.3f} | {x['max_upload']:.3f} "
            f"| {x['max_later_download']:.3f} | {x['cloud_model_down']:,.0f} |"
        )
    return lines


def participation(earlier: list[dict[str, Any]], info: dict[str, Any]) -> dict[str, Any]:
    """Who took part in a round, by client (partition) index: ``trained`` (aggregated), ``missed`` (sampled, with no
    reply by the deadline or found unavailable) and ``rejoined`` (trained after missing an earlier round: a restarted
    device is a new node with its old client index); ``earlier`` are the run's round records before it."""
    clients: dict[int, int] = {}
    last: dict[int, str] = {}  # client -> "missed" or "trained", as of the rounds so far
    for r in earlier:
        clients.update({int(n): int(c) for n, c in (r.get("clients") or {}).items()})
        for c in (r.get("participation") or {}).get("missed", []):
            last[c] = "missed"
        for c in (r.get("participation") or {}).get("trained", []):
            last[c] = "trained"
    clients.update({int(n): int(c) for n, c in (info.get("clients") or {}).items()})
    trained = sorted(clients[n] for n in info.get("accepted_nodes", []) if n in clients)
    missed = sorted(clients.get(n, -1) for n in info.get("missed_nodes", []))  # -1: never replied, client unknown
    return {
        "sampled": len(info.get("sampled_nodes", [])),
        "connected": info.get("connected_nodes", 0),
        "trained": trained,
        "missed": missed,
        "rejoined": [c for c in trained if last.get(c) == "missed"],
    }


def participation_table(rounds: list[dict[str, Any]]) -> list[str]:
    """Markdown lines: per round, the edges connected, sampled, trained, missed and rejoined (clients); none when
    every round trained every edge."""
    rows = [(r, p) for r in rounds if (p := r.get("participation"))]
    if all(not p["missed"] and p["sampled"] == p["connected"] == len(p["trained"]) for _, p in rows):
        return []
    lines = ["", "| experience | kind | round | connected | sampled | trained (clients) | missed | rejoined |"]
    lines.append("|---:|---|---:|---:|---:|---|---|---|")
    for r, p in rows:
        names = [", ".join("?" if c < 0 else str(c) for c in p[k]) or "-" for k in ("trained", "missed", "rejoined")]
        lines.append(
            f"| {r['experience']} | {r.get('phase', 'edge')} | {r['round']} | {p['connected']} | {p['sampled']} "
            f"| {' | '.join(names)} |"
        )
    return lines


def per_edge_table(rounds: list[dict[str, Any]]) -> list[str]:
    """Markdown lines: each edge's evaluation per round (examples, accuracy, cloud backend, inputs offloaded,
    fallbacks, bytes sent); none when no round kept per-edge evaluations."""
    rows = [(r, node, m) for r in rounds for node, m in sorted((r.get("client_evaluation_per_node") or {}).items())]
    if not rows:
        return []
    lines = [
        "",
        "| experience | round | node | client | cloud | examples | accuracy | exit cloud | offloaded | fallbacks "
        "| bytes sent |",
        "|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r, node, m in rows:
        acc, cloud = m.get(keys.ACCURACY), m.get(keys.EXIT_CLOUD)
        lines.append(
            f"| {r['experience']} | {r['round']} | {node} | {m.get('client', '-')} | {m.get('cloud', '-')} "
            f"| {int(m.get(keys.NUM_EXAMPLES, 0))} | {'-' if acc is None else f'{acc:.4f}'} "
            f"| {'-' if cloud is None else f'{cloud:.3f}'} | {int(m.get(keys.OFFLOADED, 0))} "
            f"| {int(m.get(keys.FALLBACKS, 0))} | {int(m.get(keys.BYTES_SENT, 0)):,} |"
        )
    return lines


def per_device_table(report: dict[str, Any]) -> list[str]:
    """Markdown lines, for a label-skewed or personal fleet: each device's accuracy on its own test images after each
    experience (the shared main block alone, the global MEANet as broadcast, the device as run; its own model
    without the cloud), its hard classes (how many, the main block with its prior against its extension on their
    test images), whether its policy keeps the extension, and its class prior's strength. None for an IID fleet."""
    config = report.get("config", {})
    if config.get("partition", "iid") == "iid" and not config.get("personal"):
        return []
    last: dict[int, dict[str, Any]] = {}
    for r in report["rounds"]:
        if r.get("phase", "edge") == "edge" and r.get("client_evaluation_per_node"):
            last[r["experience"]] = r
    if not last:
        return []

    def cell(m: dict[str, Any], key: str, digits: int = 4) -> str:
        return "-" if not isinstance(m.get(key), int | float) else f"{m[key]:.{digits}f}"

    lines = [
        "",
        "Per device, on its own test images (in its own class proportions): the shared main block, the global MEANet "
        "(broadcast edge blocks, the cloud's policy), the device as run (with the cloud); its own model without the "
        "cloud; on its hard classes' images, its main block (with its prior) against main + its extension.",
        "",
        "| experience | device | images | main (shared) | global MEANet | device as run | own, no cloud "
        "| hard classes | hard: main | hard: + extension | extension kept | prior |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for e, r in sorted(last.items()):
        for _, m in sorted(r["client_evaluation_per_node"].items(), key=lambda kv: kv[1].get("client", kv[0])):
            kept = m.get("use-extension")
            lines.append(
                f"| {e} | {m.get('client', '-')} | {int(m.get(keys.NUM_EXAMPLES, 0))} | {cell(m, 'accuracy-main')} "
                f"| {cell(m, 'accuracy-global')} | {cell(m, keys.ACCURACY)} | {cell(m, 'accuracy-personal-edge')} "
                f"| {int(m.get('num-hard', 0))} | {cell(m, 'hard-main')} | {cell(m, 'hard-extension')} "
                f"| {'-' if kept is None else ('yes' if kept else 'no')} | {cell(m, 'prior-strength', 2)} |"
            )
    return lines


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
