"""Vendors' own AI nodes (``runner: dicom-node``): the series goes out, their results come back.

``send`` (in a job's worker: pseudonymise when the product is external, C-STORE to the vendor),
``inbox`` (the SCP's side: what arrives from a vendor's results AE is kept apart from the
studies, never routed), ``stage`` (``VendorStage``: matches what came back to the job that
waits for it, checks it and commits it as the job's results), ``cli`` (``ainode vendors``).
"""
