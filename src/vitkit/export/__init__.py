"""Export: ONNX files verified against PyTorch in onnxruntime before they are written."""

from .onnx import DEFAULT_OPSET, ExportParityError, ExportReport, check_onnx, export_onnx

__all__ = ["DEFAULT_OPSET", "ExportParityError", "ExportReport", "check_onnx", "export_onnx"]
