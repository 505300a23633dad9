"""The ``alutwin`` protobuf package (see ``proto/__init__.py``)."""
