"""medkd: reproducible knowledge distillation for medical imaging."""
__version__ = "0.1.0"
