"""Vendor products shipped as OCI images: ``runner: container``.

``spec`` (the manifest section), ``engine`` (podman or docker on the command line),
``folders`` (the mercure and MAP folder contracts), ``findings_json`` (the findings a product
may write instead of DICOM), ``collect`` (what the product wrote → Findings),
``plugin`` (``ContainerPlugin``: per-job and warm containers), ``sdk`` (the side inside an
image that wraps a ``models.api`` plugin).
"""
