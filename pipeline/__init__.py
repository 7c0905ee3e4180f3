"""The catalog domain: manifests, jobs, batching and quality checks on top of model_core."""
