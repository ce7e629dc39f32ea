"""`k2d run`: the recipe (typed options), the stage graph, the stage bodies, work sharding.
"""
