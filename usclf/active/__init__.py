"""Active learning: which unlabelled frames an annotator should label next (`usclf suggest`)."""
