"""RTify experiments: runs that compose the library core (decision, heads, losses, metrics, trials,
baselines, Wong–Wang) into fits that write results.

``rdm`` — the abstract random-dot-motion task with a GRU, fitted to the human RTs (``rtify fit``,
``rtify fit-ww``, ``rtify compare``); ``pixel`` — rendered dot stimuli, video backbones and every head on
them (``rtify train-backbone``, ``rtify pixel-rdm``); ``natural`` — a recurrent CNN on images and
per-image RTs (``rtify images``). Library code never imports from here.
"""
