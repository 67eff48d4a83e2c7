"""The audit trail (IHE ATNA, DICOM PS3.15 A.5): who sent, received and changed what.

``events`` (what happened), ``messages`` (PS3.15 A.5 XML), ``syslog`` (RFC 5424 to a
collector), ``trail`` (the local file, then the collector), ``receiving`` (the SCP's
per-association bookkeeping), ``settings`` (node.yaml ``audit:``) and ``cli``
(``ainode audit``).
"""
