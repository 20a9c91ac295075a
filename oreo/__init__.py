"""oreo: offline reinforcement learning of language-model reasoning."""

__version__ = "0.1.0"
