"""Test-time search: strategies that choose among sampled answers (``strategies``), guided by the value
model OREO trains (``value``). Entry point: ``python -m oreo.evaluate search=NAME checkpoint=DIR``."""
