"""Continual-learning benchmarks with Avalanche: MEANet-FL against the baselines, side by side, one command.

    meanet bench continual --scenario split-cifar100 --out runs/continual            # every method, seed 0
    meanet bench continual --scenario drift-cifar100 --methods meanet-fl-lwf,naive,joint --seeds 0,1,2 --out DIR

Modules: ``scenarios`` (Avalanche benchmarks from tensors and their federated split), ``metrics`` (accuracy matrix,
average accuracy, forgetting and BWT with Avalanche's metric classes), ``shared`` (the cloud trajectory the methods
share, and routed evaluation), ``edge`` (MEANet in Avalanche's training loop, continual learning in class space),
``budget`` (data seen, images trained on, bytes moved), ``common`` (what every method shares), ``methods`` (the
cloud/edge/MEANet methods and the registry), ``baselines`` (naive, joint, FedAvg of the whole model), ``runner``
(seeds, checkpoints, aggregation) and ``report`` (JSON, markdown tables, plots).

Default schedule (``BenchConfig``): Split CIFAR-100 in 10 experiences, 1 epoch per experience for every method,
3 clients (IID), cloud share 0.3 (as ``meanet federate``), ResNet-20 MEANet on the edge, ResNet-32 cloud model,
calibrated routing at a 0.2 target cloud fraction. Estimated at about 65 minutes on 2 CPU cores from the measured
training speed (ResNet-20 ~200 images/s, ResNet-32 ~125 images/s) and inference assumed ~3x faster: the shared cloud
trajectory ~22 min (training ~16, cached outputs ~6), joint ~22 min, naive ~5 min, each MEANet-FL variant ~2-3 min,
the rest under 2 min. ``--epochs 2`` roughly doubles the training parts (~105 min).
"""
