"""Data sources: each returns plain numpy arrays; streams turn them into tasks."""
