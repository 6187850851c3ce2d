"""Prefect orchestration over the DVC pipeline (dvc.yaml stays the one DAG); see README.md."""
