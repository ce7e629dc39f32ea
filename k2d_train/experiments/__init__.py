"""Experiments across models: side-by-side comparison and the learning curve.
"""
