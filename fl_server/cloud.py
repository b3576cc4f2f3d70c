"""The cloud side of MEANet-FL: for each experience of the stream, train, split, broadcast, federate, evaluate.

For experience ``e``:
1. the cloud trains the main block on all the data it has received so far, then, with ``main-rounds`` > 0, *main
   rounds*: the edges train the main block on their own images of the experience (distilling the classes seen before
   from the block they received; after the first experience, a softmax over the classes they hold), and the strategy
   checks and aggregates the ``main.*`` updates with the main rounds' rule, so the edges' data reaches the main
   block. After the first experience the cloud's epochs come after the main rounds instead (``_cloud_first``): the
   edges hold only new classes, the cloud every class seen, and its epochs last balance them;
2. the cloud re-estimates the hard classes on its validation data of the classes seen so far, and trains the edge
   blocks (a starting point for the edges) and the cloud model on all it has received;
3. it broadcasts the MEANet (main block + edge blocks) and the hard-class set, and runs the strategy's rounds of edge
   fine-tuning (only adaptive + extension come back, and are aggregated); the signed round count of the experience
   goes on after its main rounds;
4. it evaluates the adaptive engine (edge + cloud) on the test images of the seen classes, and writes the report.
Server state is written atomically after every round (``state.pt``); a restarted server resumes at the experience and
round it reached.

After each cloud training (and on resume) the newest cloud model is handed to the offload service: written atomically
to ``REPORT_DIR/cloud-serving.pt`` with ``version`` = the experience index (:mod:`fl_server.offload.handoff`;
``meanet cloud serve --watch`` follows it). With ``cloud-url`` set the edges call that service; with it empty (a
simulation, a loopback deployment) the server runs the same service on loopback for its edges
(:mod:`fl_server.offload.loopback`) and names it in the evaluation instruction. Either way no cloud model rides in a
broadcast, and the round record counts the images the loopback service classified.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from flwr.serverapp import Grid

from fl_server.offload.handoff import SERVING_FILE, serving_version, write_serving_model
from fl_server.offload.loopback import LoopbackOffload
from fl_server.rounds import federate_edges, federate_main
from meanet_core import keys
from meanet_core.config import FederationConfig
from meanet_core.data import ImageTensors
from meanet_core.data.streams import Experience, concat, stream_for
from meanet_core.inference.evaluation import calibrate_for_cloud_fraction, evaluate_routing
from meanet_core.inference.policies import CalibratedPolicy, PaperPolicy, Policy
from meanet_core.keys import is_edge_key
from meanet_core.models import MEANet, build_cloud, build_meanet, describe_cloud, describe_meanet, grow_from_main
from meanet_core.training.checkpoint import FORMAT, atomic_save, load_server_state, load_state
from meanet_core.training.precision import resolve_precision
from meanet_core.training.stages import predict_logits, select_hard_classes, train_cloud, train_extension, train_main
from meanet_core.trust.broadcast import digest, edge_state, main_state
from meanet_core.trust.signing import ensure_signing_key
from strategies.signed import SignedMEANetStrategy

log = logging.getLogger("meanet.server")


class CloudServer:
    """Runs the experience/round loop of one federation and writes its report into ``cfg.report_dir``."""

    def __init__(self, cfg: FederationConfig, *, run_id: int = 0, log_fn: Callable[[str], None] | None = None) -> None:
        self.cfg = cfg
        self.out = cfg.report_path()
        self.out.mkdir(parents=True, exist_ok=True)
        self.say = log_fn or log.info
        self.splits, self.stream = stream_for(cfg)
        torch.manual_seed(cfg.seed)
        k, mean, std = self.splits.num_classes, self.splits.mean, self.splits.std
        self.model = build_meanet(cfg.model, k, mean=mean, std=std)
        self.cloud = build_cloud(cfg.cloud_model, k, mean=mean, std=std)
        blocks = {b.name: b.macs for b in describe_meanet(self.model)}
        # forward MACs per image of what each training stage runs (the extension's: main + adaptive + extension)
        self.training_macs = {
            "main": blocks["main"],
            "extension": blocks["main"] + blocks["adaptive"] + blocks["extension"],
            "cloud_model": describe_cloud(self.cloud).macs,
        }
        signing_key, verify_key = ensure_signing_key(cfg.signing_key, self.out)
        self.say(f"signing every broadcast (Ed25519); the edges pin the public key {verify_key}")
        self.strategy = SignedMEANetStrategy(
            signing_key,
            run_id=run_id,
            min_train_nodes=1,
            min_evaluate_nodes=1,
            min_available_nodes=cfg.min_edges,  # the quorum (strategies.fleet); a fleet may outnumber num-clients
            edges_per_round=cfg.edges_per_round or None,
            quorum_wait=cfg.quorum_wait,
            sample_seed=cfg.seed,
            aggregation=cfg.aggregation,
            trim_fraction=cfg.trim_fraction,
            max_norm_ratio=cfg.max_norm_ratio or None,
            norm_bound_factor=cfg.norm_bound_factor or None,
            claim_factor=cfg.claim_factor or None,
            max_claim=cfg.max_claim or None,
            krum_malicious=cfg.krum_malicious,
            reference_fn=self.reference_update,
            require_main_digest=True,  # our edges always report it
            delta_broadcast=cfg.delta_broadcast,
            broadcast_encoding=cfg.broadcast_encoding,
        )
        self.report: dict[str, Any] = {
            "config": cfg.as_run_config(),
            # what `precision` resolved to on the cloud's machine (each edge resolves `auto` on its own)
            "training_precision": resolve_precision(cfg.precision),
            "experiences": [],
            "rounds": [],
        }
        self.state_path = self.out / "state.pt"
        self.serving_path = self.out / SERVING_FILE
        self.position: dict[str, Any] = {"experience": 0, "phase": "cloud-start", "round": 0}
        self._val_predictions: tuple[tuple[int, str], np.ndarray] | None = None
        # without a cloud-url, the real offload service on loopback (started at the first evaluation)
        self.offload = LoopbackOffload(self.out, self.serving_path) if not cfg.cloud_url else None
        self._service_images = 0

    # ------------------------------------------------------------------------------------------ checkpoints
    def _save(self) -> None:
        atomic_save(
            {
                "format": FORMAT,
                "config": self.cfg.as_run_config(),
                "position": dict(self.position),
                "hard_classes": [int(c) for c in self.model.hard_classes.tolist()],
                "meanet": self.model.state_dict(),
                "cloud": self.cloud.state_dict(),
                "report": json.dumps(self.report),
            },
            self.state_path,
        )

    def _resume(self) -> None:
        if not self.state_path.exists():
            return
        saved = load_server_state(self.state_path, self.cfg.as_run_config())  # clear errors, weights only
        self.model.set_hard_classes(saved["hard_classes"])
        load_state(self.model, saved["meanet"], self.state_path, "the MEANet")
        load_state(self.cloud, saved["cloud"], self.state_path, "the cloud model")
        self.report = json.loads(saved["report"])
        self.position = dict(saved["position"])
        self.say(f"resuming from {self.state_path} at {self.position}")
        # the cloud model of the newest experience trained so far, unless the serving file already holds it (or a
        # newer one, trained before a crash that came before the state was saved: no rollback while it retrains)
        trained = min(self.position["experience"] - (self.position["phase"] != "federation"), self.cfg.experiences - 1)
        served = serving_version(self.serving_path)
        if trained >= 0 and (served is None or served < trained):
            self._publish_cloud(trained)

    def _publish_cloud(self, e: int) -> None:
        """Hand the cloud model trained for experience ``e`` to the offload service (atomic write, version ``e``)."""
        write_serving_model(
            self.cloud,
            self.serving_path,
            version=e,
            num_classes=self.splits.num_classes,
            class_names=self.splits.class_names,
        )
        self.say(f"experience {e}: cloud model version {e} written for the offload service to {self.serving_path}")

    # ------------------------------------------------------------------------------------------ trust
    def reference_update(self, sent: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The cloud's own update of the edge blocks from ``sent``, on clean data it holds (FLTrust's root data):
        the same local training as an edge, on up to ``trust-samples`` hard-class validation images of the current
        experience. The strategy scores each edge update by its cosine with this one."""
        exp = self.stream[self.position["experience"]]
        model = copy.deepcopy(self.model)  # a main round sends no edge block: those stay the cloud's
        model.load_state_dict({**model.state_dict(), **{k: torch.from_numpy(np.array(v)) for k, v in sent.items()}})
        if self.strategy.scope == "main":
            return self._main_reference(model, exp)
        root = exp.val.subset(np.flatnonzero(model.is_hard(exp.val.y).numpy()))
        if len(root) == 0:
            self.say("FLTrust: no hard-class validation image to compute the reference update on; no edge is trusted")
            return {k: np.array(v) for k, v in sent.items() if is_edge_key(k)}
        if len(root) > self.cfg.trust_samples:
            pick = np.random.default_rng(self.cfg.seed).choice(len(root), self.cfg.trust_samples, replace=False)
            root = root.subset(np.sort(pick))
        stage = self.cfg.stage(self.cfg.extension_stage_epochs)
        train_extension(model, root, stage, seed=self.cfg.seed, progress=False)
        return {k: v.detach().numpy() for k, v in edge_state(model.state_dict()).items()}

    def _main_reference(self, model: MEANet, exp: Experience) -> dict[str, np.ndarray]:
        """FLTrust's reference in a main round: the main block trained as the edges train it, on up to
        ``trust-samples`` of the cloud's validation images of the experience's new classes (the edges' classes)."""
        root = exp.val.subset(np.flatnonzero(np.isin(exp.val.y.numpy(), np.array(exp.classes))))
        if len(root) > self.cfg.trust_samples:
            pick = np.random.default_rng(self.cfg.seed).choice(len(root), self.cfg.trust_samples, replace=False)
            root = root.subset(np.sort(pick))
        if len(root):
            train_main(
                model,
                root,
                self.cfg.stage(self.cfg.local_epochs),
                distill_classes=self._old_classes(exp.index),
                distill_weight=self.cfg.main_distill,
                seed=self.cfg.seed,
                progress=False,
            )
        return {k: v.detach().numpy() for k, v in main_state(model.state_dict()).items()}

    def _old_classes(self, e: int) -> list[int]:
        """The classes seen before experience ``e`` (none at the first)."""
        return [int(c) for c in self.stream[e - 1].seen_classes] if e > 0 else []

    # ------------------------------------------------------------------------------------------ routing
    def _policy(self, e: int) -> Policy:
        """The routing policy for the current edge blocks: the paper's entropy rule, or thresholds fitted on the
        cloud's validation images of the seen classes to offload at most ``target-cloud-fraction``."""
        if self.cfg.policy == "paper":
            return PaperPolicy(self.cfg.entropy_threshold)
        self.model.eval()
        return calibrate_for_cloud_fraction(self.model, self.cloud, self.stream[e].val, self.cfg.target_cloud_fraction)

    def _policy_config(self, policy: Policy) -> dict[str, Any]:
        if isinstance(policy, CalibratedPolicy):
            return {
                keys.POLICY: policy.name,
                keys.MAIN_THRESHOLD: policy.main_threshold,
                keys.EXTENSION_THRESHOLD: policy.extension_threshold,
                keys.USE_EXTENSION: policy.use_extension,
            }
        return {keys.POLICY: policy.name}

    # ------------------------------------------------------------------------------------------ stages
    def _main_val_predictions(self, e: int) -> np.ndarray:
        """The main block's top-1 class on the cloud's validation images of the classes seen so far (one pass per
        main block: the accuracy after a stage and the hard-class choice that follows it share it)."""
        key = (e, digest(self.model.state_dict()))  # the main block's digest
        if self._val_predictions is None or self._val_predictions[0] != key:
            self.model.eval()
            pred = predict_logits(lambda x: self.model.forward_main(x).logits, self.stream[e].val).argmax(1).numpy()
            self._val_predictions = (key, pred)
        return self._val_predictions[1]

    def _main_val_accuracy(self, e: int) -> float:
        """The main block's accuracy on the cloud's validation images of the classes seen so far."""
        val = self.stream[e].val
        return float((self._main_val_predictions(e) == val.y.numpy()).mean()) if len(val) else 0.0

    def _begin(self, e: int) -> None:
        """The report's entry of experience ``e`` (once: a resumed run finds it in the saved report)."""
        if len(self.report["experiences"]) > e:
            return
        exp = self.stream[e]
        self.report["experiences"].append(
            {
                "experience": e,
                "new_classes": list(exp.classes),
                "seen_classes": len(exp.seen_classes),
                "cloud_images": sum(len(self.stream[i].cloud) for i in range(e + 1)),
                "edge_images": [len(p) for p in exp.edge],
                "cloud_training_seconds": 0.0,
                "cloud_training_stage_seconds": {},
                # images each of the cloud's stages trained on (epochs x images), and forward MACs per image
                "cloud_trained_images": {},
                "training_macs_per_image": dict(self.training_macs),
                # the main block on the cloud's validation images of the seen classes, after each stage
                "main_val_accuracy": {},
                "main_stages": ["cloud", "main rounds"] if self._cloud_first(e) else ["main rounds", "cloud"],
            }
        )

    @staticmethod
    def _cloud_first(e: int) -> bool:
        """Whether the cloud's epochs on the main block come before experience ``e``'s main rounds (a trained start
        for the edges, at the first experience) or after them (later: the edges hold only the new classes, the cloud
        every class seen so far, and its epochs last balance old and new). Measured on the main job: first is better
        at the first experience (0.264 against 0.237), last at the second (docs/results.md, *Main rounds*)."""
        return e == 0

    def _cloud_main(self, e: int) -> None:
        """The cloud trains the main block on everything it holds (see :meth:`_cloud_first` for when)."""
        cfg = self.cfg
        entry = self.report["experiences"][e]
        data = concat([self.stream[i].cloud for i in range(e + 1)])  # the cloud keeps everything it has seen
        t0 = time.perf_counter()
        self.say(f"experience {e}: training the main block on {len(data)} images ({cfg.cloud_epochs} epochs)")
        train_main(self.model, data, cfg.stage(cfg.cloud_epochs), seed=cfg.seed + e, progress=False, channels_last=True)
        entry["cloud_training_stage_seconds"]["main"] = time.perf_counter() - t0
        entry["cloud_trained_images"]["main"] = cfg.cloud_epochs * len(data)
        entry["cloud_training_seconds"] += time.perf_counter() - t0
        entry["main_val_accuracy"]["after_cloud"] = self._main_val_accuracy(e)

    def _cloud_split(self, e: int) -> None:
        """After the main block's training: its hard classes, a start for the edge blocks, and the cloud model, on
        everything the cloud holds."""
        cfg, exp = self.cfg, self.stream[e]
        entry = self.report["experiences"][e]
        data = concat([self.stream[i].cloud for i in range(e + 1)])
        stage = cfg.stage(cfg.cloud_epochs)
        t0 = time.perf_counter()
        seconds: dict[str, float] = {}
        val_pred = self._main_val_predictions(e)
        hard = select_hard_classes(
            val_pred,
            exp.val.y.numpy(),
            self.splits.num_classes,
            method=cfg.hard_method,
            fraction=cfg.hard_fraction,
            candidates=exp.seen_classes if cfg.hard_candidates == "seen" or len(exp.classes) < 2 else exp.classes,
        )
        self.model.set_hard_classes(hard)
        seconds["hard_classes"] = time.perf_counter() - t0 - sum(seconds.values())
        self._train_cloud_model(e, data)
        seconds["cloud_model"] = time.perf_counter() - t0 - sum(seconds.values())
        self.say(f"experience {e}: training adaptive + extension on the {len(hard)} hard classes")
        train_extension(
            self.model,
            data,
            stage,
            teacher=self.cloud,
            distill_weight=cfg.extension_distill,
            seed=cfg.seed + e,
            progress=False,
            channels_last=True,
        )
        seconds["extension"] = time.perf_counter() - t0 - sum(seconds.values())
        self.say(f"experience {e}: cloud trained on {len(data)} images in {time.perf_counter() - t0:.0f}s; hard {hard}")
        entry["hard_classes"] = hard
        entry["cloud_training_seconds"] += time.perf_counter() - t0
        entry["cloud_training_stage_seconds"].update(seconds)
        entry["cloud_trained_images"]["cloud_model"] = cfg.cloud_model_stage_epochs * len(data)
        entry["cloud_trained_images"]["extension"] = cfg.cloud_epochs * int(self.model.is_hard(data.y).sum())

    def _train_cloud_model(self, e: int, data: ImageTensors) -> None:
        """The cloud model's training of experience ``e`` on everything the cloud holds, with its own schedule
        (``cloud-model-epochs``, ``cloud-model-lr``): grown from the main block first with ``cloud-init = "main"``
        (at the first experience: it starts from what the edges and the cloud taught the main block, then keeps its
        own weights) or ``"main-every"`` (every experience), distilling the main block's logits with
        ``cloud-distill`` > 0 (so it goes on learning what the edges learn)."""
        cfg = self.cfg
        stage = cfg.cloud_model_stage()
        grow = cfg.cloud_init == "main-every" or (cfg.cloud_init == "main" and e == 0)
        if grow:
            grow_from_main(self.cloud, self.model.main, self.model.normalize)
        how = "grown from the main block, " if grow else ""
        how += f"distilling it (weight {cfg.cloud_distill:g}), " if cfg.cloud_distill else ""
        self.say(f"experience {e}: training the cloud model ({cfg.cloud_model}, {how}{stage.epochs} epochs)")
        train_cloud(
            self.cloud,
            data,
            stage,
            teacher=self.model,
            distill_weight=cfg.cloud_distill,
            seed=cfg.seed + e,
            progress=False,
            channels_last=True,
        )
        self.cloud.eval()

    def _federate_main(self, e: int, start_round: int, grid: Grid) -> None:
        """Main rounds: the edges train the main block on their own images (:func:`fl_server.rounds.federate_main`)."""
        federate_main(self, e, start_round, grid)

    def _federate(self, e: int, start_round: int, grid: Grid) -> None:
        """Edge (or personal) rounds after the cloud's training (:func:`fl_server.rounds.federate_edges`)."""
        federate_edges(self, e, start_round, grid)

    def _evaluate(self, e: int) -> None:
        exp = self.stream[e]
        t0 = time.perf_counter()
        policy = self._policy(e)
        summary = evaluate_routing(self.model, self.cloud, exp.test, policy)
        summary["policy"] = policy.as_dict()
        summary["evaluation_seconds"] = time.perf_counter() - t0
        self.report["experiences"][e]["evaluation"] = summary
        ref = summary["reference_accuracy"]
        self.say(
            f"experience {e}: accuracy {summary['accuracy']:.4f} (edge {ref['edge_main_plus_extension']:.4f}, "
            f"cloud only {ref['cloud_only']:.4f}; on the offloaded inputs edge {ref['offloaded_edge'] or 0:.4f}, "
            f"cloud {ref['offloaded_cloud'] or 0:.4f}); exits main {summary['exits']['main']['fraction']:.3f} "
            f"extension {summary['exits']['extension']['fraction']:.3f} "
            f"cloud {summary['exits']['cloud']['fraction']:.3f}"
        )

    # ------------------------------------------------------------------------------------------ the loop
    def run(self, grid: Grid) -> dict[str, Any]:
        from fl_server.report import write_report

        self._resume()
        t0 = time.perf_counter()
        try:
            self._run_experiences(grid)
        finally:
            if self.offload is not None:
                self.offload.stop()
        self.report["wall_seconds"] = self.report.get("wall_seconds", 0.0) + time.perf_counter() - t0
        paths = write_report(self.report, self.out)
        self.say(f"report: {paths[0]}")
        return self.report

    def _run_experiences(self, grid: Grid) -> None:
        from fl_server.report import write_report

        for e in range(self.position["experience"], self.cfg.experiences):
            self._begin(e)
            phase = self.position["phase"] if e == self.position["experience"] else "cloud-start"
            if phase == "cloud-start":
                if self._cloud_first(e):
                    self._cloud_main(e)
                self.position = {"experience": e, "phase": "main-federation", "round": 0}
                self._save()
                phase = "main-federation"
            if phase == "main-federation":  # the edges train the main block on their images
                if self.position["round"] < self.cfg.main_rounds:
                    self._federate_main(e, self.position["round"], grid)
                if self.cfg.main_rounds:
                    self.report["experiences"][e]["main_val_accuracy"]["after_main_rounds"] = self._main_val_accuracy(e)
                self.position = {"experience": e, "phase": "cloud-training", "round": 0}
                self._save()
                phase = "cloud-training"
            if phase == "cloud-training":
                if not self._cloud_first(e):
                    self._cloud_main(e)
                self._cloud_split(e)
                self._publish_cloud(e)
                self.position = {"experience": e, "phase": "federation", "round": 0}
                self._save()
            if self.position["round"] < self.cfg.rounds_per_experience:
                self._federate(e, self.position["round"], grid)
            self._evaluate(e)
            self.position = {"experience": e + 1, "phase": "cloud-start", "round": 0}
            self._save()
            write_report(self.report, self.out)
