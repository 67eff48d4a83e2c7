"""Synthetic phantoms with known ground truth, written as scanner-like DICOM series.

The reference plugins are measured against these: each generator returns the pixel data it
wrote together with the exact geometry of what it drew (nodule centres and volumes, vessel
wall thickness), so accuracy tests compare against truth rather than against the plugin.
``dicom_series`` is the shared writer that gives every phantom realistic, validator-clean
headers, so phantoms route and validate like a real scanner's series.
"""
