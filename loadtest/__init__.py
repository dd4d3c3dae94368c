"""Locust load tests against a layer-router topology (see README: Load tests)."""
