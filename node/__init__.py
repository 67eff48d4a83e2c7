"""ainode: a DICOM node that routes studies to AI plugins and sends back SEG and SR."""

__version__ = "0.1.0"
