"""Code generated from ``proto/alutwin/reflection/v1/reflection.proto`` (protobuf package ``grpc.reflection.v1``)
by ``proto/generate.py`` (``make proto``); do not edit."""
