"""The personalised-FL benchmark: a label-skewed fleet, each device scored on a test split in its own class mix.

    meanet bench personal --out runs/personal                                  # every method, beta 0.5, seed 0
    meanet bench personal --beta 0.1 --seeds 0,1,2 --methods fedavg,fedper --out DIR
    meanet bench personal --partition classes --classes-per-edge 5 --out DIR
    meanet bench personal --quick --out /tmp/personal                          # seconds-scale smoke run

Modules: ``config`` (``PersonalConfig``, the settings read once at the boundary), ``scenario`` (the fleet: the
server-held share, each device's train / validation / test splits), ``common`` (the budget every method shares, the
backbone's head/body split, training and scoring helpers, ``MethodResult``), ``fedavg`` (the FedAvg trajectory shared
by ``fedavg``, ``fedavg-ft`` and the MEANet-FL rows: ``shared_fedavg``), ``personalised`` (local-only, FedPer, FedRep,
FedBABU, Ditto), ``methods`` (the registry: name -> runner and colour family), ``runner`` (seeds, per-method
checkpoints, aggregation) and ``report`` (``results.json``, the markdown table, plots).

Every method trains the same backbone (the MEANet's main block of ``--model``), for the same rounds, local epochs and
edges per round (the same seeded sample of devices per round), from the same server warm start (``--server-epochs``
on the server-held share), and is scored per device on that device's own test split.
"""
