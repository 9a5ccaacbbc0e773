"""Serving behind NVIDIA Triton Inference Server: a model repository per export (`repository`), the python-backend
models it uses (`python_models`), the bundled pip-installable server on loopback (`server`), a client (`client`).

    vita-deploy serve export-repo --export DIR --out REPO [--backend tensorrt|onnxruntime|python-ort]
    vita-deploy serve run --repo REPO [--http-port 8000] [--grpc-port 8001]
"""
