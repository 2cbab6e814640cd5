"""Transfer Studio's engine: everything the dashboard does, usable from Python and `python -m core`.

No module in this package imports streamlit.
"""
from .config import AugmentSpec, TrainConfig

__all__ = ["AugmentSpec", "TrainConfig"]
