"""Helpers of the test suite: toy models with closed-form answers, synthetic data, process
tools and the scripts that subprocess tests launch."""
