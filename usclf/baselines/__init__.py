"""Classic clustering baselines (`usclf baseline --method`): k-means on features, autoencoders, DEC/IDEC,
DCEC/IDCEC, DeepCluster; each a method class in the registry, run by the stage `usclf/stages/baseline.py`."""
