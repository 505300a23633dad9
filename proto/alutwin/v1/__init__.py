"""Version 1 of the ``alutwin`` protobuf package: ``common.proto`` (shared messages) and ``plant.proto``
(``PlantService``). Import the generated modules directly, e.g. ``from proto.alutwin.v1 import plant_pb2``.
"""
