"""usclf: semi-supervised ultrasound organ classification."""
__version__ = "0.1.0"
