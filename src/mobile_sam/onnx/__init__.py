"""Run MobileSAM from ONNX files without torch; export them with `mobile_sam.onnx.export`.

This package imports only the runtime (numpy, Pillow, onnxruntime). The exporter lives in
`mobile_sam.onnx.export` and needs torch and onnx (``pip install 'mobile_sam[onnx]'``).
"""
from .runtime import OnnxDecoder, OnnxModelError, OnnxPredictor, create_session, load_model_info

__all__ = ["OnnxDecoder", "OnnxModelError", "OnnxPredictor", "create_session", "load_model_info"]
