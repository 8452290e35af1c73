"""Bridges to the tools cnnlab's users already run: ONNX and TorchScript export, and
torchvision-layout weights."""
