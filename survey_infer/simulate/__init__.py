"""Realistic, seeded MOONS survey simulator (DESIGN §3). See docs/simulator.md."""
from .simulator import SIM_VERSION, TRUTH_COLUMNS, SimConfig, simulate_block

# writing a simulated survey into a store is the input room's job: survey_infer.io.simulated.simulate_survey
__all__ = ["SimConfig", "simulate_block", "TRUTH_COLUMNS", "SIM_VERSION"]
