"""Prefect flows that schedule and run catalog jobs; they call pipeline, never the other way."""
