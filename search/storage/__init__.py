"""Where a study lives and what it holds: storage URLs, the settings it is held to, the commands that
wrote to it, per-trial records and the typed results of baseline and retrain."""
