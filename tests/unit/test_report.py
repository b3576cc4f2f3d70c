"""The federation report's markdown tables, from a fabricated report."""

from pathlib import Path

import pytest

from fl_server.report import busy_seconds, communication, markdown_summary, write_report


def _report() -> dict:
    exits = {k: {"fraction": f, "accuracy": 0.5} for k, f in (("main", 0.6), ("extension", 0.25), ("cloud", 0.15))}
    ref = {"main_only": 0.4, "edge_main_plus_extension": 0.42, "cloud_only": 0.5, "meanet_with_cloud": 0.45}
    ref |= {"offloaded_edge": 0.08, "offloaded_cloud": 0.28}  # 0.45 - 0.42 = 0.15 x (0.28 - 0.08)
    experience = {
        "experience": 0, "seen_classes": 50, "cloud_images": 7000, "edge_images": [6000, 5000, 4000],
        "cloud_training_seconds": 91.0, "main_val_accuracy": {"after_cloud": 0.125, "after_main_rounds": 0.25},
        "main_stages": ["cloud", "main rounds"],
    }  # fmt: skip
    round_ = {
        "experience": 0, "round": 1, "wall_seconds": 30.0, "local_training_seconds": 6.0, "aggregation_seconds": 0.04,
        "overhead_seconds": 12.0, "train_phase_seconds": 18.0,
        "bytes_received_per_client": 733984.0, "bytes_broadcast_per_client": 1875405,
        "upload_ratio_vs_full_model": 0.391, "client_evaluation": {"accuracy": 0.41}, "full_state_bytes": 1875405,
    }  # fmt: skip
    return {
        "experiences": [
            {**experience, "evaluation": {"accuracy": 0.45, "reference_accuracy": ref, "exits": exits}},
            {**experience, "experience": 1},  # trained but not evaluated yet (a run in progress): no row
        ],
        "rounds": [
            {**round_, "phase": "main", "bytes_received_per_client": 300000.0, "client_evaluation": {}},
            round_,  # no phase: a report of a run from before main rounds existed (an edge round)
            {**round_, "round": 2, "phase": "edge", "client_evaluation": {}},
        ],
        "config": {
            "main-rounds": 1,
            "local-epochs": 2,
            "cloud-epochs": 3,
            "cloud-model-epochs": 9,
            "cloud-model": "resnet56_cifar",
        },
        "wall_seconds": 600.0,
    }


def test_markdown_summary_has_one_row_per_evaluated_experience_and_round() -> None:
    text = markdown_summary(_report())
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    # five headers, one evaluated experience, two experiences past their main rounds, three rounds, two kinds of round,
    # one experience's bytes against FedAvg-full
    assert len(rows) == 5 + 1 + 2 + 3 + 2 + 1
    assert "| 0 | 0.1250 | 0.2500 | main rounds |" in rows  # the cloud's epochs came first at experience 0
    # chance 1/50; the edges' images beside the cloud's
    row = "| 0 | 50 | 0.0200 | 7000 | 15000 | 91 | 0.4500 | 0.4200 | 0.4000 | 0.5000 | 0.600 | 0.250 | 0.150 |"
    assert f"{row} 0.080 / 0.280 |" in rows
    # wall 30 = training phase 18 (local 6 + overhead 12) + aggregation 0.04 + client evaluation 11.96
    row = "| 0 | edge | 1 | 30.0 | 6.0 | 12.0 | 0.04 | 12.0 | 733,984 | 0.391 | 1,875,405 | 1.000 | 0 | 0.4100 |"
    assert row in rows
    [second] = [r for r in rows if r.startswith("| 0 | edge | 2 |")]
    assert second.endswith("| 1.000 | 0 | - |")  # a round without client evaluation says so
    # bytes per kind of round, summed per client
    assert "| main (edges train the main block) | 1 | 1,875,405 | 300,000 |" in rows
    assert "| edge (adaptive + extension) | 2 | 3,750,810 | 1,467,968 |" in rows
    # per edge and experience, both ways, against the whole float32 state up and down in each of the 3 rounds
    assert "| 0 | 3 (0) | 5,626,215 | 1,767,968 | 11,252,430 | 0.657 | 0.391 | 1.000 | 0 |" in rows
    # what each column saw
    assert "trained on the cloud images (3 epoch(s)" in text
    assert "and on the edges' images of the experience in 1 main round(s)" in text
    assert "resnet56_cifar" in text and "(9 epoch(s) per experience" in text
    assert "Whole run: 600 s." in text


def test_communication_counts_both_ways_per_experience_and_leaves_the_simulated_cloud_model_apart() -> None:
    full = 1000.0
    rounds = [
        {"experience": 0, "round": 1, "full_state_bytes": full, "bytes_broadcast_per_client": 600.0,
         "bytes_received_per_client": 80.0},
        {"experience": 0, "round": 2, "full_state_bytes": full, "bytes_broadcast_per_client": 200.0,
         "bytes_received_per_client": 50.0, "bytes_evaluate_per_client": 900.0, "bytes_cloud_model_per_client": 700.0},
        {"experience": 1, "round": 1, "full_state_bytes": full, "bytes_broadcast_per_client": 150.0,
         "bytes_received_per_client": 90.0},
    ]  # fmt: skip
    first, second = communication(rounds)
    assert first["down"] == 600 + 200 + 200 and first["cloud_model_down"] == 700 and first["up"] == 130
    assert first["fedavg_full"] == 2 * full + 3 * full  # two training rounds, one of them evaluated
    assert first["ratio_vs_fedavg_full"] == pytest.approx(1130 / 5000)
    assert first["max_upload"] == 0.08 and first["max_later_download"] == 0.2  # the first round's 600 is not later
    assert second["max_later_download"] == 0.0 and second["ratio_vs_fedavg_full"] == pytest.approx(240 / 2000)


def test_write_report_writes_json_markdown_and_plots(tmp_path: Path) -> None:
    paths = write_report(_report(), tmp_path / "out")
    assert [p.name for p in paths] == ["report.json", "report.md", "experiences.png", "rounds.png"]
    assert all(p.stat().st_size > 0 for p in paths)


@pytest.mark.parametrize(
    ("intervals", "busy"),
    [
        ([], 0.0),
        ([(0.0, 2.0)], 2.0),
        ([(0.0, 2.0), (1.0, 3.0)], 3.0),  # overlapping: counted once
        ([(4.0, 5.0), (0.0, 1.0), (0.5, 0.7)], 2.0),  # unsorted, nested, with a gap
        ([[0.0, 1.0], [1.0, 2.0]], 2.0),  # touching; lists as JSON gives them back
    ],
)
def test_busy_seconds_is_the_length_of_the_union(intervals: list, busy: float) -> None:
    assert busy_seconds(intervals) == pytest.approx(busy)
