"""Rollouts: a model name served by weighted variants (canary, A/B), shadow copies,
and the controller that rolls a breaching canary back or promotes a healthy one."""
