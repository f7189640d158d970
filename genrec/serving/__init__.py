"""Online serving: the KServe predictor, beam policies, DARE drafts and the beam-width controller.

Importing this package is cheap and never imports the pipeline SDK.
"""
