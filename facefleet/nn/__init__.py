"""Pure-PyTorch training core: backbones, dataset-aware heads, gradient reversal, BioMetricNet, metrics."""
