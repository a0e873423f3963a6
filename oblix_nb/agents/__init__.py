"""Agents consulted before each execute(): resources, connectivity, budget, and anything with ``name`` + ``check()``."""
from .base import Agent, BackgroundSampler, SampledAgent, normalize_result, run_check
from .budget import BudgetAgent
from .connectivity import ConnectivityAgent
from .resource import ResourceMonitor

__all__ = ["Agent", "BackgroundSampler", "SampledAgent", "ResourceMonitor", "ConnectivityAgent", "BudgetAgent",
           "run_check",
           "normalize_result"]
