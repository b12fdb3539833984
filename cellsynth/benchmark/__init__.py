"""Segmenter benchmark: metrics, segmenters behind one interface, the runner and the report."""
