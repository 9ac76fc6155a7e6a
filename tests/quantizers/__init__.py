"""Tests of quantizeml.quantizers."""
