"""The edge runtime: what a device runs, without PyTorch, Flower or Avalanche (numpy, ONNX Runtime, Pillow,
cryptography and httpx only).

An *edge package* (written by ``meanet export --format onnx``, :mod:`meanet_core.inference.onnx_export`) is a folder
with one ONNX graph per block (main, adaptive, extension) and a signed manifest (routing policy, hard classes, class
names, input normalisation, versions, per-block costs, int8 calibration). This package verifies it, runs it with
early exits, sends the complex inputs to the cloud service and writes what ``meanet edge predict`` writes.

It sits below everything else: nothing here imports ``meanet_core``, ``fl_client`` or torch (a test runs
``meanet edge predict`` with torch unimportable). The device installs it on its own: ``pip install ./edge``
(docs/deployment.md).
"""
