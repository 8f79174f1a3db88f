"""DICOM and NIfTI input/output; the one place where geometry conversions happen (LPS, mm)."""
