"""The original package's `utils` modules: `transforms`, `amg` and `onnx`, as thin adapters
over `mobile_sam.transforms`, `mobile_sam.masks` and `mobile_sam.onnx.export`."""
