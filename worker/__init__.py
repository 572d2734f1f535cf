"""The provider agent and the MarketNodeProvider; must import on provider machines."""
