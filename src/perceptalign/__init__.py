"""perceptalign: alignment between deep networks and perception.

NTPS for causal LMs, RTify for reaction times.
"""

__version__ = "0.2.0"
