"""Helpers the tests share: a server in a subprocess or in process, test models and certificates,
an HTTP/2 attacker, load clients, gradient checks, foreign ONNX graphs, one `wait_until`.

Imported as `tests.support.NAME` (pytest puts the repository root on the path). The client
probes (tests/server/*_probe.py) are scripts run in their own virtual environments, and stay
beside the tests that run them."""
