"""Batch prediction over raw exam folders (`usclf predict`): decode, score, resumable outputs, DICOM SR."""
