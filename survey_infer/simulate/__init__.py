"""Realistic, seeded MOONS survey simulator (DESIGN §3). See docs/simulator.md."""
from .simulator import SIM_VERSION, TRUTH_COLUMNS, SimConfig, simulate_block
from .survey import simulate_survey

__all__ = ["SimConfig", "simulate_block", "simulate_survey", "TRUTH_COLUMNS", "SIM_VERSION"]
