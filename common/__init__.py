"""mammofl library: data, models, training engines, privacy accounting, evaluation.

No Flower and no hydra entry points live here (one small Flower module excepted, later).
"""
