"""Code generated from ``proto/alutwin/kserve/grpc_predict_v2.proto`` (the KServe v2 / Open Inference Protocol,
protobuf package ``inference``) by ``proto/generate.py`` (``make proto``); do not edit. The servicer is
:mod:`twin.serving.kserve`."""
