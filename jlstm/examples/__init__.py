"""Runnable examples: ``python -m jlstm.examples.article`` reproduces the founding article's Keras model."""
