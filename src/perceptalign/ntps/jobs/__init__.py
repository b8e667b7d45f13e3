"""The NTPS jobs: each reads a config, loads a model and data, runs the library, and writes its output folder.

``score`` (NTPS tables and the statistics cache), ``probe`` (held-out linear probes), ``peers`` (the
transferability metrics NTPS competes with), ``lora`` and ``scratch`` (fine-tuning and training from
scratch, with NTPS before and after), ``study`` and ``prescreen`` (grids of the above over models ×
datasets), ``report`` (correlations and figures of a study); ``common`` holds what they share. The CLI
builds a job's config from its options; library code never imports from here.
"""
