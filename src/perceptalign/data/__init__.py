"""Data files that ship with perceptalign (see README.md in this folder for provenance and checksums)."""
