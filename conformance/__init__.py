"""Do gradients and optimizer updates mean the same thing in TensorFlow/Keras, PyTorch and JAX/Optax?

Importing the package imports no framework: backends are loaded when a run asks for them.
"""

__version__ = "0.1.0"
