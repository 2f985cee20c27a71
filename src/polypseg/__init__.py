"""polypseg: polyp segmentation in colonoscopy images and video."""

__version__ = "0.1.0"
