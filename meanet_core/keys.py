"""Record keys and metric names shared by the edge client, the cloud server and the aggregation strategy.

Every key that travels inside a Flower ``Message`` is defined here once, as a plain string, so that the client that
writes a record and the server that reads it cannot drift apart. This module must stay free of Flower (``flwr``) and
torch imports: ``meanet_core`` is plain PyTorch/numpy and is imported by both sides.

The model's state dict is split by prefix (see :class:`meanet_core.models.meanet.MEANet`):

* ``main.*``: the main block, trained by the cloud, and by the edges only in *main rounds* (:data:`SCOPE` ``"main"``),
  whose updates carry nothing else;
* ``adaptive.*`` and ``extension.*``: the edge blocks, fine-tuned by the edges and aggregated by the strategy;
* anything else (``normalize.mean``/``normalize.std``, ``hard_classes``, ``hard_index``) belongs to the cloud, like
  the main block: an edge update may carry only the keys of its round's scope.
"""

from __future__ import annotations

# ----------------------------------------------------------------------------------------- record keys (RecordDict)
ARRAYS = "arrays"
"""Key of the ``ArrayRecord`` of model arrays: the full state dict server -> edge, edge entries only edge -> server."""

METRICS = "metrics"
"""Key of the ``MetricRecord`` in a reply (training or evaluation metrics, and :data:`NUM_EXAMPLES`)."""

CONFIG = "config"
"""Key of the ``ConfigRecord`` in an instruction (training or evaluation settings)."""

CLOUD_ARRAYS = "cloud-arrays"
"""Key of the ``ArrayRecord`` with the cloud model's state dict, added to evaluation instructions when the edges need a
local stand-in for the cloud (simulation)."""

EDGE_INFO = "edge-info"
"""Key of the ``ConfigRecord`` in a training reply describing the edge (:data:`MAIN_DIGEST`, :data:`CLIENT`)."""

# ----------------------------------------------------------------------------------------- metric / config entries
NUM_EXAMPLES = "num-examples"
"""Number of examples a client trained or evaluated on: the weight of its reply in every weighted average."""

SERVER_ROUND = "server-round"
"""Config entry Flower's ``FedAvg.configure_train``/``configure_evaluate`` inject into every instruction."""

TRAIN_SECONDS = "train-seconds"
"""Seconds an edge spent fine-tuning in a round (a training metric)."""

LOSS = "loss"
"""Mean training or evaluation loss of a client."""

EXPERIENCE = "experience"
"""Config entry: index of the current experience (step) of the continual-learning stream."""

HARD_CLASSES = "hard-classes"
"""Config entry: the hard-class ids (a list of int) the extension block answers for."""

TRAIN_STARTED = "train-started"
"""Edge-info entry: wall-clock time (``time.time()``) at which the edge started fine-tuning in this round."""

TRAIN_ENDED = "train-ended"
"""Edge-info entry: wall-clock time (``time.time()``) at which the edge finished fine-tuning in this round."""

MAIN_DIGEST = "main-digest"
"""Edge-info entry: digest of the main block as the edge loaded it (proves the broadcast arrived intact)."""

CLASS_NAMES = "class-names"
"""Config entry: the cloud's class names (a list of str; index = class id). An edge with its own images maps its class
folders to ids by these names (:mod:`fl_client.local_data`)."""

POLICY = "policy"
"""Config entry: the routing policy the edges use (``paper`` or ``calibrated``)."""

MAIN_THRESHOLD = "main-threshold"
"""Config entry (calibrated policy): an easy top-1 stays at the main block when its max-probability reaches this."""

EXTENSION_THRESHOLD = "extension-threshold"
"""Config entry (calibrated policy): the extension keeps its answer when its max-probability reaches this."""

USE_EXTENSION = "use-extension"
"""Config entry (calibrated policy): false when the fit found the edge more accurate without the extension (every
top-1 then exits at the main block or goes to the cloud); absent means true."""

CLIENT = "client"
"""Edge-info entry: the client's partition index."""

BROADCAST_SIGNATURE = "broadcast-signature"
"""Config entry (bytes): the cloud's Ed25519 signature over the broadcast (see :mod:`meanet_core.trust.signing`)."""

BROADCAST_ROUND = "broadcast-round"
"""Config entry: the signed round of edge fine-tuning within the experience (1, 2, ...; a resumed server goes on
counting). With :data:`EXPERIENCE` it is the broadcast's position, which an edge never accepts going backwards."""

BROADCAST_STATE = "meanet-broadcast"
"""Key of the ``ConfigRecord`` in an edge's ``context.state`` holding the newest position it accepted
(:data:`EXPERIENCE`, :data:`BROADCAST_ROUND`)."""

ENCODING = "encoding"
"""Edge-info entry: how the reply's arrays are encoded (``float32``, ``fp16``, ``int8``; see
:mod:`meanet_core.wire.compression`). Absent: ``float32``."""

ENCODE_SECONDS = "encode-seconds"
"""Edge-info entry: seconds the edge spent encoding its update (:mod:`meanet_core.wire.compression`)."""

SCOPE = "scope"
"""Config entry of a training instruction: which blocks the edges train and send back, one of :data:`SCOPES`.
``"edge"`` (the default when absent): adaptive + extension on hard-class samples, the main block frozen. ``"main"``:
the main block on all the edge's images of the experience (a *main round*, when the data evolves), the edge blocks
untouched. ``"personal"`` (a federation with ``personal = true``): each edge trains its *own* adaptive + extension
blocks on its own images, keeps them (with its own hard classes, class prior and routing policy) and sends back no
array at all, only its metrics."""

SCOPES: tuple[str, ...] = ("edge", "main", "personal")

PERSONAL_STATE = "meanet-personal"
"""Key of the ``ConfigRecord`` in an edge's ``context.state`` holding its personal state's bytes
(:mod:`meanet_core.wire.personal_state`) under ``"bytes"``; never in a message."""

QUERY = "query"
"""Config entry of a query message from the server: what it asks (:data:`DEVICE_NAME`)."""

DEVICE_NAME = "device-name"
"""What a query asks, and the edge-info entry of the answer: the edge's name (its partition id, or its node-config
id), by which the server draws its samples so that a rerun samples the same devices."""

PERSONAL_DIGEST = "personal-digest"
"""Edge-info entry of a personal round's reply: the digest of the edge's personal blocks after the round (so a report
can tell devices' blocks apart without ever seeing them)."""

PERSONAL_BASE = "personal-base"
"""Edge-info entry of a personal round's reply: the digest of the personal blocks the edge started the round from
(its kept state; ``""`` when it had none, or refused it, and started from the broadcast)."""

CLOUD_ACCURACY = "cloud-accuracy"
"""Config entry of a personal round: the cloud model's accuracy on the cloud's validation images, which an edge counts
on for the inputs it would offload when it calibrates its own routing policy."""

PERSONAL_METRICS: tuple[str, ...] = (
    "accuracy-main",
    "accuracy-global",
    "accuracy-personal-edge",
    "hard-main",
    "hard-extension",
    "hard-images",
    "num-hard",
    "use-extension",
    "prior-strength",
)
"""Evaluation metrics of an edge in a personal federation, on its own test images: the shared main block alone, the
global MEANet (the broadcast edge blocks, the cloud's policy), the device's own model without the cloud; on the
test images of its own hard classes, its main block (with its prior) against main + its extension; how many such
images; its hard-class count, whether its policy keeps the extension (1/0), and its prior's strength."""

OLD_CLASSES = "old-classes"
"""Config entry of a main-round instruction: the classes seen before this experience (a list of int). The edge
distils the main block's logits over them from the block it received (LwF), so the new data does not erase them."""

OFFLOAD_URL = "offload-url"
"""Config entry of an evaluation instruction from a federation without ``cloud-url``: the URL of the offload service
the cloud server runs on loopback for its edges (:mod:`fl_server.offload.loopback`). Signed with the rest."""

OFFLOAD_TOKEN_FILE = "offload-token"
"""File name, in the report folder, of the bearer token of that loopback service (mode 0600)."""

STATE_DIGEST = "state-digest"
"""Config entry of every broadcast: the digest (:func:`meanet_core.trust.broadcast.digest`, every entry) of the state
the edge must load, over the keys the broadcast covers (:func:`covers`). A compressed broadcast sends a change, and the
edge checks that what it rebuilt is exactly this state. The signature covers it."""

BASE_DIGEST = "base-digest"
"""Config entry of a *compressed* broadcast (:mod:`meanet_core.wire.broadcast_delta`): the digest of the state the
change applies to, over the keys the broadcast covers, which the edge must hold (kept in its state under
:data:`STATE_CACHE`). The signature covers it."""

CATCH_UP = "catch-up"
"""Config entry of a broadcast to an edge that missed some of the last broadcasts (not sampled): the changes since
the state it holds, per group of entries (the edge blocks, the rest), one ``"group:base digest:state digest"`` string
per step (an empty base: the group is new to the edge). The arrays of step *i* carry the prefix ``"i>"``; the edge
applies each step to what it holds of that group, checks both digests, and ends on :data:`STATE_DIGEST`. The
signature covers it."""

STATE_CACHE = "meanet-broadcast-cache"
"""Key of the ``ArrayRecord`` in an edge's ``context.state`` holding the state it last rebuilt from a broadcast."""

UPLOAD_RESIDUAL = "meanet-upload-residual"
"""Key of the ``ArrayRecord`` in an edge's ``context.state`` holding what its compressed uploads have not sent yet
(error feedback), with :data:`RESIDUAL_INFO`."""

RESIDUAL_INFO = "meanet-upload-residual-info"
"""Key of the ``ConfigRecord`` in an edge's ``context.state``: the experience and scope the residual belongs to."""

# ----------------------------------------------------------------------------------------- exit metrics
ACCURACY = "accuracy"
"""Overall accuracy, whichever exit answered."""

EXIT_MAIN = "exit-main"
"""Fraction of samples answered by the main block alone."""

EXIT_EXTENSION = "exit-extension"
"""Fraction of samples answered by the extension block (hard classes)."""

EXIT_CLOUD = "exit-cloud"
"""Fraction of samples offloaded to the cloud (complex inputs)."""

MACS_PER_IMAGE = "macs-per-image"
"""Mean multiply-accumulates per image, edge and cloud together."""

ENERGY_PER_IMAGE = "energy-per-image"
"""Mean energy per image in joules (edge compute plus transmission)."""

BYTES_OFFLOADED_PER_IMAGE = "bytes-offloaded-per-image"
"""Mean bytes sent to the cloud per image."""

OFFLOADED = "offloaded"
"""Evaluation metric: inputs the edge sent to the cloud (the request left the device, answered or not)."""

FALLBACKS = "fallbacks"
"""Evaluation metric: inputs the policy routed to the cloud that the edge answered itself, flagged (the cloud did not
answer, or the edge has no cloud)."""

BYTES_SENT = "bytes-sent"
"""Evaluation metric: image bytes the edge sent to the cloud in the evaluation."""

CLOUD_BACKEND = "cloud"
"""Edge-info entry of an evaluation reply: where the edge's complex inputs went: ``remote`` (the cloud offload service
over HTTPS), ``local`` (the cloud model shipped in the instruction, simulation) or ``none`` (answered on the edge)."""

OFFLOAD_METRICS: tuple[str, ...] = (OFFLOADED, FALLBACKS, BYTES_SENT)
"""Counts an edge reports per evaluation: summed over edges, never averaged, in the round report."""

EXIT_METRICS: tuple[str, ...] = (
    ACCURACY,
    EXIT_MAIN,
    EXIT_EXTENSION,
    EXIT_CLOUD,
    MACS_PER_IMAGE,
    ENERGY_PER_IMAGE,
    BYTES_OFFLOADED_PER_IMAGE,
)
"""Every metric an adaptive-inference evaluation reports, in a stable order."""

# ----------------------------------------------------------------------------------------- state-dict prefixes
MAIN_PREFIX = "main."
"""Prefix of the main block's state-dict entries (cloud-owned)."""

EDGE_PREFIXES: tuple[str, ...] = ("adaptive.", "extension.")
"""Prefixes of the state-dict entries the edges fine-tune and upload (parameters and BatchNorm buffers)."""


def is_edge_key(name: str) -> bool:
    """Whether a state-dict entry belongs to the edge blocks (``adaptive.*`` or ``extension.*``).

    >>> is_edge_key("extension.fc.weight"), is_edge_key("main.fc.weight"), is_edge_key("normalize.mean")
    (True, False, False)
    """
    return name.startswith(EDGE_PREFIXES)


GROUPS: tuple[str, ...] = ("edge", "rest")
"""The groups of entries a broadcast tracks apart: the edge blocks, and the rest (what a main round covers)."""


def group_of(name: str) -> str:
    """The broadcast group of a state-dict entry (:data:`GROUPS`).

    >>> group_of("extension.fc.weight"), group_of("main.fc.weight")
    ('edge', 'rest')
    """
    return "edge" if is_edge_key(name) else "rest"


def is_main_key(name: str) -> bool:
    """Whether a state-dict entry belongs to the main block (``main.*``)."""
    return name.startswith(MAIN_PREFIX)


def covers(name: str, scope: str) -> bool:
    """Whether a broadcast for a round of ``scope`` carries a state-dict entry: a main round everything but the edge
    blocks (it trains the main block, and the edge blocks would go unused), an edge round and an evaluation everything.

    >>> covers("extension.fc.weight", "main"), covers("normalize.mean", "main"), covers("extension.fc.weight", "edge")
    (False, True, True)
    """
    if scope not in SCOPES:
        raise ValueError(f"unknown round scope {scope!r}; expected one of {', '.join(SCOPES)}")
    return scope != "main" or not is_edge_key(name)


def in_scope(name: str, scope: str) -> bool:
    """Whether a state-dict entry is trained (and uploaded) by the edges in a round of ``scope`` (:data:`SCOPES`).

    >>> in_scope("extension.fc.weight", "edge"), in_scope("main.fc.weight", "edge"), in_scope("main.fc.weight", "main")
    (True, False, True)
    """
    if scope == "edge":
        return is_edge_key(name)
    if scope == "main":
        return is_main_key(name)
    if scope == "personal":  # the edges keep what they train: nothing goes up
        return False
    raise ValueError(f"unknown round scope {scope!r}; expected one of {', '.join(SCOPES)}")
