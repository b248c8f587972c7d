"""Training runs -> self-describing ONNX policies (the torch side of the contract in
sacae_deploy/contract.py; the runtime side is the torch-free `sacae_deploy.Policy`)."""

from export.errors import ExportError
from export.onnx_export import ExportResult, export_agent, export_run, load_run
from export.precision import PRECISIONS, PrecisionOptions

__all__ = ["ExportError", "ExportResult", "PRECISIONS", "PrecisionOptions", "export_agent", "export_run", "load_run"]
