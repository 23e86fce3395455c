"""reconciler: GitOps for systemd hosts. Pure package marker; keep imports here empty."""

__version__ = "0.1.0"
