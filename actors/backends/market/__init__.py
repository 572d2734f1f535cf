"""The market backend: a buyer cluster's nodes are leases on providers' machines."""
