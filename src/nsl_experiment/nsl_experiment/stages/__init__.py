"""The stages of the pipeline, one module each; each is ``stage(ctx) -> dict`` (its summary)."""
