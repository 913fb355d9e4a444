"""knowsubnet: find, remove and evaluate knowledge-critical subnetworks of pretrained LMs."""

__version__ = "0.1.0"
