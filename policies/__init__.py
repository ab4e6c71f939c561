"""Routing policies: one module each, behind the protocol in :mod:`router_rl.policies.base`."""
