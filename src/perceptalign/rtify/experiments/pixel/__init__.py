"""Pixel-level random-dot motion: dot stimuli, causal video backbones, their training, and every decision
head on a frozen backbone compared with humans."""
