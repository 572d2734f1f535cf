"""MarketNodeProvider and its command runner: loaded by the launcher and by sub-cluster heads' autoscalers."""
