"""ONNX Runtime backend: EfficientNet-Lite0 model builder and ImageNet helpers."""
