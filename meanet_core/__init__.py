"""MEANet core: plain PyTorch and numpy, no Flower.

Rooms, each a package whose ``__init__`` names what it offers; imports run one way, from left to right:

    keys, faults, wire  <-  data, models  <-  training, trust  <-  inference;   config  <-  pipeline

- :mod:`meanet_core.models`: backbones, the MEANet (main, adaptive, extension blocks), cloud models, the registry;
- :mod:`meanet_core.data`: datasets, partitions, batches, the stream of experiences;
- :mod:`meanet_core.training`: the training stages, precision, checkpoints;
- :mod:`meanet_core.trust`: broadcast digests, signing, certificates, TLS;
- :mod:`meanet_core.inference`: the adaptive engine, policies, cost, evaluation, the signed edge model;
- :mod:`meanet_core.wire`: the update and payload formats;
- :mod:`meanet_core.config`: the validated run config (read once, at the boundary);
- :mod:`meanet_core.keys`: the record keys shared by client and server;
- :mod:`meanet_core.faults`: fault specs for tests and demos;
- :mod:`meanet_core.pipeline`: ``meanet train``'s resumable pipeline.

``docs/design.md`` draws the data flow.
"""
