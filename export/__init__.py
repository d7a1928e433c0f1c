"""Export: fold input standardization and batch norm into affine ONNX weights, verified."""
