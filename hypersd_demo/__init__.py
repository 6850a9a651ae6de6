"""The live demo and real-time serving: a local page whose image follows the prompt as it is
typed (``python -m hypersd_demo``), on hypersd_core's Generator and hypersd_models' loaders."""
