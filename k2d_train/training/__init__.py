"""What every trained stage shares: the one training loop, its checkpoints and losses, the encoder forward and
the cached teacher states and distributions it trains on.
"""
