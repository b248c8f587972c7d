"""sacae-deploy runtime: torch-free ONNX policies for pixel-based control.

Importing this package pulls in numpy only; onnxruntime loads with the first `Policy`.
"""

__version__ = "0.1.0"

from sacae_deploy.policy import Policy  # noqa: E402  (numpy only at import; onnxruntime at load)

__all__ = ["Policy", "__version__"]
