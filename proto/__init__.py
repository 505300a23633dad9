"""The gRPC contract of alutwin: ``.proto`` files under ``proto/alutwin/v1`` and the Python code generated from them.

The generated ``*_pb2.py``, ``*_pb2_grpc.py`` and ``*_pb2.pyi`` files are produced by ``proto/generate.py``
(``make proto``) with the repository root as include path, so they import each other as
``from proto.alutwin.v1 import ...``; ``tests/test_proto_fresh.py`` checks they are up to date.
"""
