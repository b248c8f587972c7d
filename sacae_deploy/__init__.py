"""sacae-deploy runtime: torch-free ONNX policies for pixel-based control.

Importing this package pulls in numpy only; onnxruntime loads with the first `Policy`.
"""

__version__ = "0.1.0"
