"""Taking a trained model to the clinic: export (ONNX, TorchScript, MLflow pyfunc), the model registry."""
