"""Promotion and deployment: the gate, the local model registry + ModelServer, and KServe."""

from genrec.deploy.gate import GateDecision, GateError, gate_decision
from genrec.deploy.registry import DeployedModel, LocalRegistry

__all__ = ["DeployedModel", "GateDecision", "GateError", "LocalRegistry", "gate_decision"]
