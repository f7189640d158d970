"""Kubeflow components: each reads artefacts, calls the genrec library, and writes artefacts and
metrics. Imports of genrec happen inside the functions, which run in the genrec image."""
