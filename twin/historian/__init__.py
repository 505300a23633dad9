"""Measurements: the crash-safe historian, its IngestService and client, and the plant-to-twin bridge."""
