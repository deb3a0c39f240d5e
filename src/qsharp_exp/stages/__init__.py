"""The pipeline's stages, one module each: what a stage depends on (its inputs, which name its cache
directory) stands next to the code that builds it. `cache.py` keeps the directories; `context.py` holds
what every stage of a run shares."""
