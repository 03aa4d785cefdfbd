"""Run MobileSAM from ONNX files without torch; export them with `mobile_sam.onnx.export`.

This package imports only the runtime (numpy, Pillow, SciPy; onnxruntime or OpenVINO when a
model is opened). The exporter lives in `mobile_sam.onnx.export` and needs torch and onnx
(``pip install 'mobile_sam[onnx]'``).
"""
from .runtime import (
    OnnxDecoder,
    OnnxModelError,
    OnnxPredictor,
    create_openvino_session,
    create_session,
    is_export_folder,
    load_model_info,
    open_export_folder,
)

__all__ = ["OnnxDecoder", "OnnxModelError", "OnnxPredictor", "create_openvino_session",
           "create_session", "is_export_folder", "load_model_info", "open_export_folder"]
