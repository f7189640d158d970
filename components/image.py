"""The image components run in. kfp.local ignores it; a cluster run replaces it with
`pipeline.image` from the config (see pipelines.genrec_pipeline)."""

BASE_IMAGE = "python:3.11-slim"
